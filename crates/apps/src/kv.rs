//! The key-value application: the first application, and what benchmarks drive.

use crate::executor::Ctx;
use crate::registry::Role;
use crate::{codes, keys, Reject};
use comity_core::cbor::{MapView, Value};
use comity_store::StoreError;

pub const MAX_KEY_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The key (and value) `args` name, if they have the shape `op` takes:
/// `{key, value}` for `put`, `{key}` for `delete`, within the size limits.
/// Checked at ingress too, so that a malformed one is never queued.
pub fn check_args<'a>(
    op: &str,
    args: &'a Value,
) -> Result<(&'a str, Option<&'a [u8]>), &'static str> {
    let m = MapView::new(args).map_err(|_| codes::BAD_ARGS)?;
    let key = m.text("key").map_err(|_| codes::BAD_ARGS)?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(codes::BAD_ARGS);
    }
    match op {
        "put" => {
            let value = m.bytes("value").map_err(|_| codes::BAD_ARGS)?;
            if value.len() > MAX_VALUE_LEN || m.0.len() != 2 {
                return Err(codes::BAD_ARGS);
            }
            Ok((key, Some(value)))
        }
        "delete" if m.0.len() != 1 => Err(codes::BAD_ARGS),
        "delete" => Ok((key, None)),
        _ => Err(codes::UNKNOWN_OP),
    }
}

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
    let (key, value) = match check_args(op, args) {
        Ok(checked) => checked,
        Err(code) => return Ok(Err(Reject(code))),
    };
    if let Some(value) = value {
        ctx.batch.put(&keys::kv(&ctx.signer, key), value)?;
    } else {
        if ctx.batch.get(&keys::kv(&ctx.signer, key))?.is_none() {
            return Ok(Err(Reject(codes::NOT_FOUND)));
        }
        ctx.batch.delete(&keys::kv(&ctx.signer, key))?;
    }
    ctx.batch
        .aux_put(&keys::kv_history(&ctx.signer, key, ctx.index), &[])?;
    Ok(Ok(()))
}
