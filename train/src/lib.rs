//! rlip-train
