//! Block-level model priors: for each *column class* of a block, the state of the integer
//! symbol model ([`UintModel`]) after coding the first [`PRIOR_SYMBOLS`] symbols of the first
//! long column of that class in the block. A record column may start its model from its
//! class's prior instead of from p = 1/2, which saves the cost of re-learning the symbol
//! distribution in every record (≈ 4 B per long record on gen.py-shaped data, see
//! `docs/decisions/2026-11-21-rate-over-sealed-blocks.md`) and is what makes short
//! independently decodable segments affordable.
//!
//! A class is the column's role (timestamps, decimal mantissas, near-decimal corrections)
//! and its header (differencing order, transform, length-tree depth): columns of one class
//! code symbols of the same kind with a model of the same shape.
//!
//! Invariants:
//! - A block holds at most [`MAX_PRIORS`] priors, one per class; a prior never changes once
//!   learnt, so a record coded against it decodes with the block's final priors section.
//! - Learning is streaming: the [`LEARN_AT`]-th column of a class with at least
//!   [`PRIOR_SYMBOLS`] symbols defines the prior, so a block writer stays one pass over its
//!   series. A prior's state costs 60 to 950 bytes and saves ≈ 3 B per long record, so a
//!   class seen in fewer long columns than that (small blocks) gets none.
//! - A record column uses a prior only where that codes it smaller (the writer codes the
//!   column's first 64 symbols both ways, where the two models differ most); a prior that
//!   does not fit costs one bit per column.
//! - Parsing untrusted bytes never panics: impossible model states are rejected.

use super::CodecError;
use super::rc::{Encoder, UintModel};
use super::varint::{Reader, put_u64};

/// Symbols a prior is trained on (about one segment of a segmented record).
pub const PRIOR_SYMBOLS: usize = 120;
/// Most priors one block holds (a bound on the section's size: each is at most ~1 KB).
pub const MAX_PRIORS: usize = 32;
/// The long column of a class that defines its prior (the earlier ones are counted only):
/// a prior pays for its bytes in the block only over about 50 records.
pub const LEARN_AT: u32 = 64;
/// Most classes whose long columns are counted before they have a prior.
const MAX_COUNTED: usize = 4 * MAX_PRIORS;

/// Column role: timestamps of a raw series.
pub const ROLE_TS: u8 = 0;
/// Column role: decimal mantissas of a raw series' values.
pub const ROLE_MANTISSA: u8 = 1;
/// Column role: near-decimal bit-pattern corrections of a raw series' values.
pub const ROLE_CORRECTION: u8 = 2;
/// Column role: any other integer column (rollups); such columns never use priors.
pub const ROLE_OTHER: u8 = 3;

/// The class of an integer column: its role and its header byte without the common-factor
/// flag (order, transform, length-tree depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassKey {
    /// One of the `ROLE_*` constants.
    pub role: u8,
    /// `order | transform << 2 | len_bits << 4` as in the column header.
    pub header: u8,
}

impl ClassKey {
    /// Length-tree depth of the class's model.
    pub fn len_bits(self) -> u32 {
        u32::from((self.header >> 4) & 7)
    }
}

/// The priors of one block, in the order they were learnt (equality compares those only).
#[derive(Debug, Clone, Default)]
pub struct Priors {
    classes: Vec<(ClassKey, UintModel)>,
    /// Long columns seen so far per class without a prior (writers only).
    counted: Vec<(ClassKey, u32)>,
    /// Which long column of a class defines its prior (0 is taken as [`LEARN_AT`]).
    learn_at: u32,
}

impl PartialEq for Priors {
    fn eq(&self, other: &Priors) -> bool {
        self.classes == other.classes
    }
}

impl Eq for Priors {}

impl Priors {
    /// No priors (v1 blocks, rollup blocks, or a block before its first long column).
    pub fn new() -> Priors {
        Priors::default()
    }

    /// No priors yet; [`Priors::learn`] will define a class's prior from its `at`-th long
    /// column instead of the [`LEARN_AT`]-th (tests and benches use 1 to exercise priors
    /// with few series).
    pub fn learning_at(at: u32) -> Priors {
        Priors {
            learn_at: at.max(1),
            ..Priors::default()
        }
    }

    /// How many classes have a prior.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there is no prior.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The prior of `key`, if learnt.
    pub fn get(&self, key: ClassKey) -> Option<&UintModel> {
        self.classes.iter().find(|(k, _)| *k == key).map(|(_, m)| m)
    }

    /// Counts a column of class `key` with `symbols` and learns the class's prior from it
    /// when it is the [`LEARN_AT`]-th long one (at least [`PRIOR_SYMBOLS`] symbols), the
    /// class has none yet and the block has room; `role` [`ROLE_OTHER`] never learns.
    pub fn learn(&mut self, key: ClassKey, symbols: &[u64]) {
        let at = if self.learn_at == 0 {
            LEARN_AT
        } else {
            self.learn_at
        };
        if key.role == ROLE_OTHER || self.classes.len() >= MAX_PRIORS || self.get(key).is_some() {
            return;
        }
        let Some(first) = symbols.get(..PRIOR_SYMBOLS) else {
            return;
        };
        let seen = match self.counted.iter().position(|(k, _)| *k == key) {
            Some(i) => match self.counted.get_mut(i) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => return,
            },
            None if self.counted.len() < MAX_COUNTED => {
                self.counted.push((key, 1));
                1
            }
            None => return,
        };
        if seen < at {
            return;
        }
        self.counted.retain(|(k, _)| *k != key);
        let mut model = UintModel::with_len_bits(key.len_bits());
        let mut scratch = Vec::new();
        let mut enc = Encoder::new(&mut scratch);
        for &s in first {
            model.encode(&mut enc, s);
        }
        enc.finish();
        self.classes.push((key, model));
    }

    /// Whether every prior of `other` is here, identical (a record coded against `other`
    /// then decodes the same against `self`).
    pub fn covers(&self, other: &Priors) -> bool {
        other.classes.iter().all(|(k, m)| self.get(*k) == Some(m))
    }

    /// Appends the section: `count:varint (role:u8 header:u8 state)*` where `state` is
    /// [`UintModel::write_state`].
    pub fn write(&self, out: &mut Vec<u8>) {
        put_u64(out, self.classes.len() as u64);
        for (k, m) in &self.classes {
            out.push(k.role);
            out.push(k.header);
            m.write_state(out);
        }
    }

    /// Parses a section written by [`Priors::write`].
    pub fn read(r: &mut Reader<'_>) -> Result<Priors, CodecError> {
        let bad = CodecError::Corrupt("bad priors section");
        let n = r.u64().ok_or(bad.clone())?;
        if n > MAX_PRIORS as u64 {
            return Err(CodecError::Corrupt("too many priors"));
        }
        let mut p = Priors::new();
        for _ in 0..n {
            let role = r.u8().ok_or(bad.clone())?;
            let header = r.u8().ok_or(bad.clone())?;
            let key = ClassKey { role, header };
            if role >= ROLE_OTHER || header & 0x80 != 0 || p.get(key).is_some() {
                return Err(bad);
            }
            let m = UintModel::read_state(key.len_bits(), r).ok_or(bad.clone())?;
            p.classes.push((key, m));
        }
        Ok(p)
    }
}
