//! Image garbage collection like the kubelet's image GC manager: when the filesystem holding the
//! store is at least `high_percent` full, remove images no container uses, least recently used
//! first, until the estimated usage is below `low_percent`. Images used within `min_age` are
//! kept (a fresh pull about to start a container must not vanish). Layers shared with kept
//! images stay ([`ImageStore::remove`]).

use crate::{Image, ImageStore, Result};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// `--image-gc-high-threshold` / `--image-gc-low-threshold` and the minimum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Size and free space of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub capacity: u64,
    pub available: u64,
}

/// Where disk usage comes from (a fake in tests).
pub trait DiskUsageSource: Send + Sync {
    fn usage(&self, path: &Path) -> std::io::Result<DiskUsage>;
}

/// The real filesystem, by `statvfs(2)`.
pub struct Statvfs;

impl DiskUsageSource for Statvfs {
    fn usage(&self, path: &Path) -> std::io::Result<DiskUsage> {
        let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        let frag = st.fragment_size() as u64;
        Ok(DiskUsage {
            capacity: st.blocks() as u64 * frag,
            available: st.blocks_available() as u64 * frag,
        })
    }
}

/// The images to remove, in order: unused (`in_use` holds image ids), older than the minimum
/// age, least recently used first, until the bytes freed (image sizes, as upstream estimates)
/// bring usage below the low threshold. Nothing when usage is below the high threshold.
pub fn select(
    images: &[Image],
    in_use: &HashSet<String>,
    usage: DiskUsage,
    policy: GcPolicy,
    now: u64,
) -> Vec<Image> {
    if usage.capacity == 0 {
        return Vec::new();
    }
    let used = usage.capacity.saturating_sub(usage.available);
    let used_percent = used.saturating_mul(100) / usage.capacity;
    if used_percent < policy.high_percent as u64 {
        return Vec::new();
    }
    let target_used = usage.capacity / 100 * policy.low_percent as u64;
    let mut to_free = used.saturating_sub(target_used);
    let mut candidates: Vec<&Image> = images
        .iter()
        .filter(|i| !in_use.contains(&i.id))
        .filter(|i| now.saturating_sub(i.last_used) >= policy.min_age.as_secs())
        .collect();
    candidates.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then_with(|| a.reference.cmp(&b.reference))
    });
    let mut out = Vec::new();
    for image in candidates {
        if to_free == 0 {
            break;
        }
        to_free = to_free.saturating_sub(image.size);
        out.push(image.clone());
    }
    out
}

impl ImageStore {
    /// One garbage collection pass; returns the references removed.
    pub fn collect_garbage(
        &self,
        policy: GcPolicy,
        disk: &dyn DiskUsageSource,
    ) -> Result<Vec<String>> {
        let usage = disk.usage(self.root()).map_err(crate::io_err(format!(
            "disk usage of {}",
            self.root().display()
        )))?;
        let images = self.list()?;
        let mut in_use = HashSet::new();
        for image in &images {
            if !self.containers_using(image)?.is_empty() {
                in_use.insert(image.id.clone());
            }
        }
        let mut removed = Vec::new();
        for image in select(&images, &in_use, usage, policy, crate::unix_now()) {
            // A container may have started from it since the listing: remove_unused rechecks.
            match self.remove_unused(&image.reference) {
                Ok(()) => {
                    info!(reference = %image.reference, size = image.size, "image garbage-collected");
                    removed.push(image.reference);
                }
                Err(e) => warn!(reference = %image.reference, error = %e, "image not collected"),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str, id: &str, size: u64, last_used: u64) -> Image {
        Image {
            reference: reference.into(),
            id: id.into(),
            manifest_digest: format!("m-{id}"),
            layers: Vec::new(),
            size,
            config: Default::default(),
            last_used,
        }
    }

    fn names(v: Vec<Image>) -> Vec<String> {
        v.into_iter().map(|i| i.reference).collect()
    }

    const NOW: u64 = 10_000;

    #[test]
    fn below_the_high_threshold_nothing_goes() {
        let imgs = vec![image("a", "1", 50, 0)];
        let usage = DiskUsage {
            capacity: 1000,
            available: 151,
        };
        assert!(select(&imgs, &HashSet::new(), usage, GcPolicy::default(), NOW).is_empty());
    }

    #[test]
    fn least_recently_used_unused_images_until_below_low() {
        // 90% used; down to 80% means freeing 100 bytes.
        let usage = DiskUsage {
            capacity: 1000,
            available: 100,
        };
        let imgs = vec![
            image("newest", "1", 60, NOW - 200),
            image("oldest-in-use", "2", 500, NOW - 5000),
            image("old", "3", 60, NOW - 3000),
            image("middle", "4", 60, NOW - 1000),
            image("fresh", "5", 500, NOW - 10),
        ];
        let in_use: HashSet<String> = ["2".to_string()].into();
        let got = names(select(&imgs, &in_use, usage, GcPolicy::default(), NOW));
        assert_eq!(got, vec!["old", "middle"]);
        // Not enough to free: every candidate goes, but never an in-use or too-young one.
        let usage = DiskUsage {
            capacity: 1000,
            available: 0,
        };
        let got = names(select(&imgs, &in_use, usage, GcPolicy::default(), NOW));
        assert_eq!(got, vec!["old", "middle", "newest"]);
    }
}
