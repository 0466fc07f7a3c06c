//! The ACPI power button: the kernel's `button` driver exposes it as an input device named
//! "Power Button"; a KEY_POWER press is turned into SIGPWR for PID 1.

use std::io::Read;
use tracing::{info, warn};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16), type (2), code (2), value (4).
const EVENT_LEN: usize = 24;

/// Whether one `input_event` record is a power-key press.
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < EVENT_LEN {
        return false;
    }
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

fn power_button_devices() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/input") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        if dev_name.trim() == "Power Button" {
            out.push(format!("/dev/input/{name}"));
        }
    }
    out
}

/// Looks for power buttons for a few seconds (the input devices register asynchronously) and
/// starts one reader thread per button; each raises `SIGPWR` in this process on a press.
pub fn watch_power_buttons() {
    let spawned = std::thread::Builder::new().name("power-button".into()).spawn(|| {
        let mut devs = Vec::new();
        for _ in 0..30 {
            devs = power_button_devices();
            if !devs.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if devs.is_empty() {
            warn!("no ACPI power button found; power off with SIGTERM to PID 1 or `k3rs poweroff`");
        }
        for dev in devs {
            let _ = std::thread::Builder::new().name("power-button".into()).spawn(move || read_button(&dev));
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "starting the power button thread failed");
    }
}

fn read_button(dev: &str) {
    let mut file = None;
    for _ in 0..30 {
        match std::fs::File::open(dev) {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    let Some(mut f) = file else {
        warn!(device = %dev, "opening the power button failed");
        return;
    };
    info!(device = %dev, "watching the power button");
    let mut ev = [0u8; EVENT_LEN];
    while f.read_exact(&mut ev).is_ok() {
        if is_power_press(&ev) {
            info!("power button pressed");
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGPWR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_press() {
        let mut ev = [0u8; EVENT_LEN];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev));
    }
}
