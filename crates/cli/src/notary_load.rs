//! The notary workload of `comity bench --workload notary`: per client, 60%
//! registrations (two parties, both required to sign), 30% party signatures
//! of its own registered documents, 10% other lifecycle events (custody
//! offered to the other party, then accepted). Every transaction is valid
//! when sent in order, so a rejection means a bug, not load.

use comity_apps::notary::document;
use comity_client::{Hash, Signer};
use serde_json::json;
use std::collections::VecDeque;

/// What a transaction does to the client's view once it is committed.
pub enum Effect {
    Registered { id: Hash, digest: Hash },
    Signed,
    Offered { doc: usize },
    Accepted { doc: usize },
}

struct Doc {
    id: Hash,
    /// Party (0 or 1) holding custody, and whether it offered it to the other.
    custodian: usize,
    offered: bool,
}

/// One client's documents and what it still has to do to them.
pub struct NotaryLoad {
    parties: [Signer; 2],
    docs: Vec<Doc>,
    /// (document, digest, party) signatures still to make.
    to_sign: VecDeque<(Hash, Hash, usize)>,
    next_custody: usize,
    /// False for registration-only runs.
    track: bool,
}

impl NotaryLoad {
    /// `me` registers and signs first; `partner` is the other party. With
    /// `track` false only registrations are made (and nothing is remembered).
    pub fn new(me: Signer, partner: Signer, track: bool) -> NotaryLoad {
        NotaryLoad {
            parties: [me, partner],
            docs: Vec::new(),
            to_sign: VecDeque::new(),
            next_custody: 0,
            track,
        }
    }

    /// The next transaction for a draw `roll` in 0..100, and its effect.
    pub fn next(&mut self, roll: u64, fresh: [u8; 32]) -> (Vec<u8>, Effect) {
        let roll = if self.track { roll } else { 0 };
        if (60..90).contains(&roll) {
            if let Some((doc, digest, party)) = self.to_sign.pop_front() {
                return (
                    self.parties[party].notary_sign(&doc, &digest),
                    Effect::Signed,
                );
            }
        }
        if roll >= 90 && !self.docs.is_empty() {
            let i = self.next_custody % self.docs.len();
            self.next_custody += 1;
            let d = &self.docs[i];
            let other = 1 - d.custodian;
            return if d.offered {
                (
                    self.parties[other].notary_act("custody.accept", &d.id, "bench"),
                    Effect::Accepted { doc: i },
                )
            } else {
                let to = self.parties[other].id;
                (
                    self.parties[d.custodian].notary_custody_offer(&d.id, &to, "bench"),
                    Effect::Offered { doc: i },
                )
            };
        }
        let digest = fresh;
        let args = json!({
            "digest": hex::encode(digest),
            "title": "benchmark contract",
            "type": "contract",
            "matter": "BENCH-1",
            "org": "bench",
            "parties": [
                {"id": hex::encode(self.parties[0].id), "role": "buyer"},
                {"id": hex::encode(self.parties[1].id), "role": "seller"},
            ],
            "retention": {"period_ms": 0, "approvals": 1},
        });
        let tx = self.parties[0]
            .notary_register(&args)
            .expect("register arguments are valid");
        let id = document::id_of(&digest);
        (tx, Effect::Registered { id, digest })
    }

    /// Records a committed transaction's effect.
    pub fn committed(&mut self, effect: Effect) {
        match effect {
            // Registration-only runs never sign or transfer: keep nothing.
            Effect::Registered { .. } if !self.track => {}
            Effect::Registered { id, digest } => {
                self.to_sign.push_back((id, digest, 0));
                self.to_sign.push_back((id, digest, 1));
                self.docs.push(Doc {
                    id,
                    custodian: 0,
                    offered: false,
                });
            }
            Effect::Signed => {}
            Effect::Offered { doc } => self.docs[doc].offered = true,
            Effect::Accepted { doc } => {
                let d = &mut self.docs[doc];
                d.custodian = 1 - d.custodian;
                d.offered = false;
            }
        }
    }
}
