//! PID 1 of the k3rs appliance: early mounts, kernel modules (read from `modules.dep`, loaded with
//! `finit_module`), cgroup2 delegation, sysctls, first-boot config (NoCloud seed or `k3rs.toml`),
//! the data partition, networking (rtnetlink + DHCPv4), supervision of the node daemon and a clean
//! power-off. Syscalls that order matters for go through [`sys::Sys`] so they are unit-tested.

pub mod blockdev;
pub mod config;
pub mod grow;
pub mod logfile;
pub mod modules;
pub mod mounts;
pub mod net;
mod pid1;
mod power;
pub mod readiness;
pub mod sntp;
pub mod supervisor;
pub mod sys;
pub mod update;

pub use pid1::{
    memory_in_use_kib, request_poweroff, request_reboot, run_pid1, BUILD_EPOCH_FILE, DATA_DIR,
    KUBECONFIG, KUBECONFIG_BEGIN, KUBECONFIG_END, MODULES_FILE, NODE_PID_FILE,
};
