//! PID 1 of the k3rs appliance (mounts, modules, networking, supervision).
//! Not built yet: see issue 6.
