//! HTTP clients as tower services, ready to go under the layers.
//!
//! - hyper: `hyper_util::client::legacy::Client` is already a `Service<http::Request<B>>`; use it
//!   as is (plain HTTP for the mock). It never follows redirects, so a key only ever goes to the
//!   host of the request it was put in. Feature `rustls` adds [`https`], a legacy client with
//!   rustls for Google's endpoint.
//! - reqwest (feature `reqwest`): [`ReqwestService`] adapts a `reqwest::Client` it builds with
//!   [`same_origin_redirects`], so that no redirect carries a key to another host.

#[cfg(feature = "rustls")]
mod https;
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use https::{HttpsClient, https};

#[cfg(feature = "reqwest")]
mod reqwest_service;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_service::{ReqwestError, ReqwestService, same_origin_redirects};
