//! HTTP clients as tower services, ready to go under the layers.
//!
//! - hyper: `hyper_util::client::legacy::Client` is already a `Service<http::Request<B>>`; use it
//!   as is (plain HTTP for the mock, a TLS connector such as `hyper-rustls` for Google).
//! - reqwest (feature `reqwest`): [`ReqwestService`] adapts a `reqwest::Client`.

#[cfg(feature = "reqwest")]
mod reqwest_service;

#[cfg(feature = "reqwest")]
pub use reqwest_service::{ReqwestError, ReqwestService};
