//! The constitution: for each governance action, the rule that accepts it.
//!
//! It is plain data on the ledger (CBOR in state; TOML or JSON in files and
//! the API), validated whenever it is set and whenever membership changes, so
//! that no rule can become impossible to satisfy.

use super::action::ACTION_NAMES;
use super::Id;
use comity_core::Hash;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A week: long enough for people in different time zones to vote.
pub const DEFAULT_EXPIRY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Largest electorate or veto list one rule may name.
const MAX_NAMED: usize = 256;
const MAX_DEPTH: usize = 4;

/// How many approvals a rule needs from its electorate of `n` members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// More than half.
    Majority,
    /// Every one.
    Unanimous,
    /// At least this many.
    AtLeast(u64),
    /// At least this fraction (numerator, denominator), rounded up.
    Fraction(u64, u64),
}

impl Threshold {
    pub fn needed(self, n: u64) -> u64 {
        match self {
            Threshold::Majority => n / 2 + 1,
            Threshold::Unanimous => n,
            Threshold::AtLeast(k) => k,
            Threshold::Fraction(a, b) => (a * n).div_ceil(b),
        }
        // An empty electorate must never accept by default.
        .max(1)
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Majority => f.write_str("majority"),
            Threshold::Unanimous => f.write_str("unanimous"),
            Threshold::AtLeast(k) => write!(f, "{k}"),
            Threshold::Fraction(a, b) => write!(f, "{a}/{b}"),
        }
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("threshold {s:?}: use majority, unanimous, N, or N/M");
        let num = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
        let t = match s.trim() {
            "majority" => Threshold::Majority,
            "unanimous" => Threshold::Unanimous,
            other => match other.split_once('/') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a == 0 || b == 0 || a > b || b > 1000 {
                        return Err(format!("threshold {s:?}: need 0 < N <= M <= 1000"));
                    }
                    Threshold::Fraction(a, b)
                }
                None => {
                    let k = num(other)?;
                    if k == 0 || k > MAX_NAMED as u64 {
                        return Err(format!("threshold {s:?}: need 1 <= N <= {MAX_NAMED}"));
                    }
                    Threshold::AtLeast(k)
                }
            },
        };
        Ok(t)
    }
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// When a proposal is accepted or rejected.
///
/// The electorate is the active members named in `of` (all active members
/// when absent). The rule accepts once `approve` of them have approved and
/// every `all_of` rule accepts; it rejects once that can no longer happen, or
/// as soon as a member listed in `veto` votes reject.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub veto: Vec<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<Rule>,
}

/// The state of a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    Accepted,
    Rejected,
}

/// Who has voted what, and who may vote.
pub struct Tally<'a> {
    pub active: &'a BTreeSet<Hash>,
    pub approvals: &'a BTreeSet<Hash>,
    pub rejections: &'a BTreeSet<Hash>,
}

impl Rule {
    pub fn majority() -> Rule {
        Rule {
            approve: Some(Threshold::Majority),
            ..Rule::default()
        }
    }

    pub fn unanimous() -> Rule {
        Rule {
            approve: Some(Threshold::Unanimous),
            ..Rule::default()
        }
    }

    fn electorate(&self, active: &BTreeSet<Hash>) -> BTreeSet<Hash> {
        match &self.of {
            Some(named) => named
                .iter()
                .map(|m| m.0)
                .filter(|m| active.contains(m))
                .collect(),
            None => active.clone(),
        }
    }

    pub fn evaluate(&self, t: &Tally<'_>) -> Verdict {
        if self
            .veto
            .iter()
            .any(|m| t.active.contains(&m.0) && t.rejections.contains(&m.0))
        {
            return Verdict::Rejected;
        }
        let mut verdicts = Vec::with_capacity(self.all_of.len() + 1);
        if let Some(th) = self.approve {
            let e = self.electorate(t.active);
            let need = th.needed(e.len() as u64);
            let yes = e.intersection(t.approvals).count() as u64;
            let no = e.intersection(t.rejections).count() as u64;
            verdicts.push(if yes >= need {
                Verdict::Accepted
            } else if e.len() as u64 - no < need {
                Verdict::Rejected
            } else {
                Verdict::Open
            });
        }
        verdicts.extend(self.all_of.iter().map(|r| r.evaluate(t)));
        combine(&verdicts)
    }

    /// Why this rule could never accept with these active members, if it could not.
    pub fn unsatisfiable(&self, active: &BTreeSet<Hash>) -> Option<String> {
        if let (Some(th), e) = (self.approve, self.electorate(active)) {
            let need = th.needed(e.len() as u64);
            if need > e.len() as u64 {
                return Some(match &self.of {
                    Some(_) => format!(
                        "needs {need} approvals but only {} of its named members are active",
                        e.len()
                    ),
                    None => format!(
                        "needs {need} approvals but only {} members are active",
                        e.len()
                    ),
                });
            }
        }
        self.all_of.iter().find_map(|r| r.unsatisfiable(active))
    }

    fn check_shape(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("rules nest deeper than {MAX_DEPTH}"));
        }
        if self.approve.is_none() && self.all_of.is_empty() {
            return Err("a rule needs `approve` or `all_of`".into());
        }
        if self.approve.is_none() && self.of.is_some() {
            return Err("`of` needs `approve`".into());
        }
        let of = self.of.as_deref().unwrap_or_default();
        if of.is_empty() && self.of.is_some() {
            return Err("`of` names no member".into());
        }
        for list in [of, &self.veto] {
            if list.len() > MAX_NAMED {
                return Err(format!("a rule may name at most {MAX_NAMED} members"));
            }
            if list.iter().collect::<BTreeSet<_>>().len() != list.len() {
                return Err("a member is named twice in one list".into());
            }
        }
        self.all_of
            .iter()
            .try_for_each(|r| r.check_shape(depth + 1))
    }

    fn named(&self, out: &mut BTreeSet<Hash>) {
        out.extend(self.of.iter().flatten().chain(&self.veto).map(|m| m.0));
        self.all_of.iter().for_each(|r| r.named(out));
    }
}

fn combine(vs: &[Verdict]) -> Verdict {
    if vs.contains(&Verdict::Rejected) {
        Verdict::Rejected
    } else if vs.iter().all(|v| *v == Verdict::Accepted) {
        Verdict::Accepted
    } else {
        Verdict::Open
    }
}

/// The rules in force. `rules` maps action names to their rule; other
/// actions fall under `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constitution {
    /// How long a proposal stays open, in ledger time.
    #[serde(default = "default_expiry")]
    pub expiry_ms: u64,
    pub default: Rule,
    #[serde(default)]
    pub rules: BTreeMap<String, Rule>,
}

fn default_expiry() -> u64 {
    DEFAULT_EXPIRY_MS
}

impl Default for Constitution {
    /// Majority for everything; unanimity to change the constitution itself
    /// and to switch protocols (every member must have upgraded its nodes,
    /// or they stop at the switch).
    fn default() -> Self {
        Constitution {
            expiry_ms: DEFAULT_EXPIRY_MS,
            default: Rule::majority(),
            rules: BTreeMap::from([
                ("constitution.set".to_string(), Rule::unanimous()),
                ("protocol.switch".to_string(), Rule::unanimous()),
            ]),
        }
    }
}

impl Constitution {
    pub fn rule(&self, action: &str) -> &Rule {
        self.rules.get(action).unwrap_or(&self.default)
    }

    /// The rule a proposal of these actions must pass: each distinct action's rule.
    pub fn rule_for<'a>(&self, actions: impl IntoIterator<Item = &'a str>) -> Rule {
        let mut rules: Vec<Rule> = Vec::new();
        for a in actions {
            let r = self.rule(a);
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
        match rules.len() {
            1 => rules.pop().expect("one rule"),
            _ => Rule {
                all_of: rules,
                ..Rule::default()
            },
        }
    }

    /// Checks the form: known action names, sane rules, a usable expiry.
    pub fn check_shape(&self) -> Result<(), String> {
        if !(1000..=366 * 24 * 3600 * 1000).contains(&self.expiry_ms) {
            return Err("expiry_ms must be between 1 second and 366 days".into());
        }
        for name in self.rules.keys() {
            if !ACTION_NAMES.contains(&name.as_str()) {
                return Err(format!("unknown action {name:?} in rules"));
            }
        }
        self.all_rules()
            .try_for_each(|(name, r)| r.check_shape(0).map_err(|e| format!("rule {name}: {e}")))
    }

    /// Checks that every rule can still be met by the active members.
    pub fn check_satisfiable(&self, active: &BTreeSet<Hash>) -> Result<(), String> {
        for (name, r) in self.all_rules() {
            if let Some(why) = r.unsatisfiable(active) {
                return Err(format!("rule {name} could never be satisfied: it {why}"));
            }
        }
        Ok(())
    }

    /// Full validation of a constitution being set: its form, that it can be
    /// satisfied, and that every member it names is active.
    pub fn validate(&self, active: &BTreeSet<Hash>) -> Result<(), String> {
        self.check_shape()?;
        for (name, r) in self.all_rules() {
            let mut named = BTreeSet::new();
            r.named(&mut named);
            if let Some(m) = named.iter().find(|m| !active.contains(*m)) {
                return Err(format!(
                    "rule {name} names {}, which is not an active member",
                    hex::encode(m)
                ));
            }
        }
        self.check_satisfiable(active)
    }

    fn all_rules(&self) -> impl Iterator<Item = (&str, &Rule)> {
        std::iter::once(("default", &self.default))
            .chain(self.rules.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<Hash> {
        (1..=n).map(|i| [i; 32]).collect()
    }

    fn set(v: &[Hash]) -> BTreeSet<Hash> {
        v.iter().copied().collect()
    }

    fn eval(r: &Rule, active: &[Hash], yes: &[Hash], no: &[Hash]) -> Verdict {
        r.evaluate(&Tally {
            active: &set(active),
            approvals: &set(yes),
            rejections: &set(no),
        })
    }

    #[test]
    fn thresholds() {
        assert_eq!(Threshold::Majority.needed(3), 2);
        assert_eq!(Threshold::Majority.needed(4), 3);
        assert_eq!(Threshold::Unanimous.needed(0), 1);
        assert_eq!(Threshold::Fraction(2, 3).needed(4), 3);
        assert_eq!(
            "2/3".parse::<Threshold>().unwrap(),
            Threshold::Fraction(2, 3)
        );
        assert_eq!("5".parse::<Threshold>().unwrap(), Threshold::AtLeast(5));
        for bad in ["0", "0/3", "4/3", "x", "1/0", ""] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn majority_accepts_and_rejects_as_soon_as_decided() {
        let m = ids(3);
        let r = Rule::majority();
        assert_eq!(eval(&r, &m, &m[..1], &[]), Verdict::Open);
        assert_eq!(eval(&r, &m, &m[..2], &[]), Verdict::Accepted);
        assert_eq!(eval(&r, &m, &m[..1], &m[1..2]), Verdict::Open);
        assert_eq!(eval(&r, &m, &[], &m[..2]), Verdict::Rejected);
        // Votes of members no longer active do not count.
        assert_eq!(eval(&r, &m[..2], &m[1..3], &[]), Verdict::Open);
    }

    #[test]
    fn named_set_and_veto() {
        let m = ids(4);
        let r = Rule {
            approve: Some(Threshold::AtLeast(1)),
            of: Some(vec![Id(m[0]), Id(m[1])]),
            veto: vec![Id(m[3])],
            ..Rule::default()
        };
        assert_eq!(eval(&r, &m, &m[2..3], &[]), Verdict::Open);
        assert_eq!(eval(&r, &m, &m[1..2], &[]), Verdict::Accepted);
        assert_eq!(eval(&r, &m, &m[..2], &m[3..4]), Verdict::Rejected);
        assert_eq!(eval(&r, &m, &[], &m[..2]), Verdict::Rejected);
    }

    #[test]
    fn all_of_needs_every_part() {
        let m = ids(3);
        let r = Rule {
            all_of: vec![
                Rule::majority(),
                Rule {
                    approve: Some(Threshold::AtLeast(1)),
                    of: Some(vec![Id(m[2])]),
                    ..Rule::default()
                },
            ],
            ..Rule::default()
        };
        assert_eq!(eval(&r, &m, &m[..2], &[]), Verdict::Open);
        assert_eq!(eval(&r, &m, &m[1..3], &[]), Verdict::Accepted);
        assert_eq!(eval(&r, &m, &m[..2], &m[2..3]), Verdict::Rejected);
    }

    #[test]
    fn unsatisfiable_rules_refused() {
        let m = ids(3);
        let mut c = Constitution::default();
        assert!(c.validate(&set(&m)).is_ok());
        c.rules.insert(
            "member.add".into(),
            Rule {
                approve: Some(Threshold::AtLeast(4)),
                ..Rule::default()
            },
        );
        assert!(c.validate(&set(&m)).unwrap_err().contains("never"));
        c.rules.insert(
            "member.add".into(),
            Rule {
                approve: Some(Threshold::Unanimous),
                of: Some(vec![Id(m[0]), Id(m[1])]),
                ..Rule::default()
            },
        );
        assert!(c.validate(&set(&m)).is_ok());
        // Unanimity of the named members still active adapts to a removal...
        assert!(c.check_satisfiable(&set(&[m[0], m[2]])).is_ok());
        // ...but removing every named member would leave the rule unsatisfiable.
        assert!(c.check_satisfiable(&set(&[m[2]])).is_err());
        c.rules.get_mut("member.add").unwrap().approve = Some(Threshold::AtLeast(2));
        assert!(c.check_satisfiable(&set(&[m[0], m[2]])).is_err());
        // Naming someone who is not an active member is refused.
        c.rules.get_mut("member.add").unwrap().veto = vec![Id([9; 32])];
        assert!(c
            .validate(&set(&m))
            .unwrap_err()
            .contains("not an active member"));
        c.rules.clear();
        c.rules.insert("no.such".into(), Rule::majority());
        assert!(c.validate(&set(&m)).is_err());
    }

    #[test]
    fn toml_and_json_forms() {
        let t = r#"
            expiry_ms = 86400000
            default = { approve = "majority" }
            [rules]
            "constitution.set" = { approve = "unanimous" }
            "user.add" = { approve = "1" }
        "#;
        let c: Constitution = toml::from_str(t).unwrap();
        assert_eq!(c.rule("user.add").approve, Some(Threshold::AtLeast(1)));
        assert_eq!(c.rule("member.add"), &Rule::majority());
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["rules"]["user.add"]["approve"], "1");
        let back: Constitution = serde_json::from_value(j).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Rule>(r#"{"approve":"majority","typo":1}"#).is_err());
    }
}
