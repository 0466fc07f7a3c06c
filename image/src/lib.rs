//! Builds bootable A/B disk images from `board-configs/`. Not built yet: see issue 6.
