//! rlip-data
