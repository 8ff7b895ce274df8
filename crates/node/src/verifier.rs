//! Signature checks of submitted transactions, batched: submissions that
//! arrive together are verified together, which costs about half as much
//! per Ed25519 signature as checking them one by one. A batch that fails is
//! checked one by one, so only the bad signatures are refused.
//!
//! Under load the thread waits a little for a batch to fill, but not long:
//! with the signers' keys already decompressed, a batch of two costs about
//! 30 µs per signature here and one of 8 about as little as larger ones
//! (19–23 µs; `ed25519_speed` example), while every wait adds to each
//! submission's latency. A lone submission on a quiet node is checked at once.

use comity_core::batch_verify::Ed25519Batch;
use comity_core::crypto::{Alg, PublicKey};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most signatures checked in one batch.
const MAX_BATCH: usize = 256;
/// A busy verifier stops waiting once a batch has this many signatures...
const FULL_ENOUGH: usize = 8;
/// ...or this long after its first arrived: small next to a group commit.
const LINGER: Duration = Duration::from_millis(2);

struct Job {
    key: PublicKey,
    msg: Vec<u8>,
    sig: Vec<u8>,
    reply: oneshot::Sender<bool>,
}

/// Handle to the verifier thread.
pub struct Verifier {
    jobs: mpsc::Sender<Job>,
}

impl Verifier {
    pub fn spawn() -> std::io::Result<Verifier> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || {
                let ed25519 = Ed25519Batch::new();
                // Whether the last batch had company: then waiting pays.
                let mut busy = false;
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let deadline = Instant::now() + LINGER;
                    while batch.len() < MAX_BATCH {
                        let next = match rx.try_recv() {
                            Ok(j) => Ok(j),
                            Err(_) if busy && batch.len() < FULL_ENOUGH => {
                                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                            }
                            Err(_) => Err(RecvTimeoutError::Timeout),
                        };
                        match next {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    busy = batch.len() > 1;
                    metrics::histogram!("comity_verify_batch").record(batch.len() as f64);
                    check(&ed25519, batch);
                }
            })?;
        Ok(Verifier { jobs })
    }

    /// Whether `sig` is `key`'s valid signature over `msg`.
    pub async fn verify(&self, key: PublicKey, msg: Vec<u8>, sig: Vec<u8>) -> bool {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key,
            msg,
            sig,
            reply,
        };
        match self.jobs.send(job) {
            Ok(()) => answer.await.unwrap_or(false),
            // The thread is gone (shutdown): check here instead.
            Err(mpsc::SendError(j)) => j.key.verify(&j.msg, &j.sig).is_ok(),
        }
    }
}

fn check(ed25519: &Ed25519Batch, batch: Vec<Job>) {
    let (ed, other): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|j| j.key.alg() == Alg::EdDsa);
    let all_good = ed.len() > 1 && {
        let items: Vec<_> = ed
            .iter()
            .map(|j| (&j.key, j.msg.as_slice(), j.sig.as_slice()))
            .collect();
        ed25519.verify(&items)
    };
    for j in ed.into_iter().chain(other) {
        let ok = all_good || j.key.verify(&j.msg, &j.sig).is_ok();
        let _ = j.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::crypto::SigningKey;

    fn job(i: u8, alg: Alg, bad: bool) -> (Job, oneshot::Receiver<bool>) {
        let k = SigningKey::generate(alg);
        let msg = vec![i; 50];
        let mut sig = k.sign(&msg);
        if bad {
            sig[3] ^= 1;
        }
        let (reply, rx) = oneshot::channel();
        let key = k.public();
        (
            Job {
                key,
                msg,
                sig,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_bad_signature_in_a_batch_is_refused_and_the_good_ones_pass() {
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for i in 0..40u8 {
            let alg = if i % 7 == 0 { Alg::Es256 } else { Alg::EdDsa };
            let bad = i % 9 == 4;
            let (j, rx) = job(i, alg, bad);
            batch.push(j);
            answers.push((rx, !bad));
        }
        let ed25519 = Ed25519Batch::new();
        check(&ed25519, batch);
        for (mut rx, want) in answers {
            assert_eq!(rx.try_recv().unwrap(), want);
        }
        // All good: the batch answer stands for each.
        let (batch, answers): (Vec<_>, Vec<_>) = (0..10).map(|i| job(i, Alg::EdDsa, false)).unzip();
        check(&ed25519, batch);
        for mut rx in answers {
            assert!(rx.try_recv().unwrap());
        }
    }

    #[tokio::test]
    async fn the_thread_answers() {
        let v = Verifier::spawn().unwrap();
        let k = SigningKey::generate(Alg::EdDsa);
        let sig = k.sign(b"m");
        assert!(v.verify(k.public(), b"m".to_vec(), sig.clone()).await);
        assert!(!v.verify(k.public(), b"n".to_vec(), sig).await);
    }
}
