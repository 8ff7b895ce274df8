//! Comity's Rust SDK.
//!
//! - [`Client`] calls every endpoint of the node HTTP API (`docs/api.md`) over
//!   HTTPS, trusting only the network's CA certificate, optionally presenting a
//!   TLS client certificate for authenticated reads.
//! - [`Signer`] builds and signs transactions (COSE_Sign1 via
//!   [`comity_core::tx::Tx::sign`]) bound to one network.
//! - [`verify`] holds offline checks of what the node returns (checkpoint
//!   signatures, consistency proofs), using only `comity_core`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), comity_client::ClientError> {
//! use comity_client::{Client, Signer};
//! let ca = std::fs::read("comity-data/ca.pem")?;
//! let client = Client::new("https://127.0.0.1:8701", &ca, None)?;
//! let identity = client.network_identity().await?;
//! let signer = Signer::from_pem_file("comity-data/keys/alice.key.pem", identity.network_id)?;
//! let status = client.submit(&signer.kv_put("greeting", b"hello"), true).await?;
//! println!("committed at index {:?}", status.index);
//! # Ok(()) }
//! ```

mod client;
mod error;
pub mod hexser;
mod signer;
mod types;
pub mod verify;

pub use client::Client;
pub use comity_core::Hash;
pub use error::{ApiError, ClientError};
pub use signer::{now_ms, tx_id, Signer};
pub use types::*;
