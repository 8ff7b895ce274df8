//! The key-value application: the first application, and what benchmarks drive.

use crate::executor::Ctx;
use crate::registry::Role;
use crate::{codes, keys, Reject};
use comity_core::cbor::{MapView, Value};
use comity_store::StoreError;

pub const MAX_KEY_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// `kv.put {key, value}` and `kv.delete {key}` by active users and members,
/// each in a key space of its own: no identity writes or reads another's
/// keys (members, who audit, read them).
pub fn execute(
    ctx: &mut Ctx<'_, '_>,
    op: &str,
    args: &Value,
) -> Result<Result<(), Reject>, StoreError> {
    if !matches!(ctx.role, Role::User | Role::Member) {
        return Ok(Err(Reject(codes::FORBIDDEN)));
    }
    let Ok(m) = MapView::new(args) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    let Ok(key) = m.text("key") else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    match op {
        "put" => {
            let Ok(value) = m.bytes("value") else {
                return Ok(Err(Reject(codes::BAD_ARGS)));
            };
            if value.len() > MAX_VALUE_LEN || m.0.len() != 2 {
                return Ok(Err(Reject(codes::BAD_ARGS)));
            }
            ctx.batch.put(&keys::kv(&ctx.signer, key), value)?;
        }
        "delete" => {
            if m.0.len() != 1 {
                return Ok(Err(Reject(codes::BAD_ARGS)));
            }
            if ctx.batch.get(&keys::kv(&ctx.signer, key))?.is_none() {
                return Ok(Err(Reject(codes::NOT_FOUND)));
            }
            ctx.batch.delete(&keys::kv(&ctx.signer, key))?;
        }
        _ => return Ok(Err(Reject(codes::UNKNOWN_OP))),
    }
    ctx.batch
        .aux_put(&keys::kv_history(&ctx.signer, key, ctx.index), &[])?;
    Ok(Ok(()))
}
