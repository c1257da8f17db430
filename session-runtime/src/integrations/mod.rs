//! Where sessions meet the frameworks and servers bots run on. Each integration goes through
//! the per-update lifecycle ([`crate::lifecycle`]) and nothing below it.

#[cfg(feature = "axum")]
pub(crate) mod axum;
#[cfg(feature = "teloxide")]
pub mod dispatching;
#[cfg(feature = "polling")]
pub mod polling;
pub mod telegram;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tower")]
pub(crate) mod tower;
#[cfg(feature = "webhook")]
pub mod webhook;
