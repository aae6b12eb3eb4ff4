//! pushgate
