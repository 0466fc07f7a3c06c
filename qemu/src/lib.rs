//! Boots k3rs images under QEMU for people and tests. Not built yet: see issue 6.
