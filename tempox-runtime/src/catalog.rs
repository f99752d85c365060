//! The compensation catalog: every annotated operation in the program, filled at
//! link time.
//!
//! Each `#[idempotent]` / `#[non_idempotent]` function adds one
//! [`OperationEntry`] to the [`OPERATIONS`] slice, so a process that never made a
//! call can still compensate its record knowing only the operation's name.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use linkme::distributed_slice;

use crate::error::Error;
use crate::record::Kind;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs a compensation given the compensated call's recorded output (JSON).
/// `Err` carries the compensation's error message.
pub type CompensateFn = fn(Vec<u8>) -> BoxFuture<'static, Result<(), String>>;

/// Runs an operation's `probe` from its recorded input (JSON of its
/// arguments): `Ok(Some(output))` when the effect happened (the output as JSON),
/// `Ok(None)` when it did not.
pub type ProbeFn = fn(Vec<u8>) -> BoxFuture<'static, Result<Option<Vec<u8>>, String>>;

/// Where an operation is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// `module_path!()` of the definition.
    pub module: &'static str,
    /// `file!()`.
    pub file: &'static str,
    /// `line!()`.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({}:{})", self.module, self.file, self.line)
    }
}

/// How an operation is undone.
#[derive(Clone, Copy)]
pub enum Compensation {
    /// No compensation declared (allowed for idempotent operations only).
    None,
    /// `compensate = noop`: nothing can or need be undone.
    Noop,
    /// A workflow: undone by rolling back its completed steps.
    Rollback,
    /// `compensate = f`.
    Call {
        /// The compensation's operation name.
        name: &'static str,
        /// Decodes the output and calls `f(output)`.
        run: CompensateFn,
    },
}

impl fmt::Debug for Compensation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compensation::None => f.write_str("None"),
            Compensation::Noop => f.write_str("Noop"),
            Compensation::Rollback => f.write_str("Rollback"),
            Compensation::Call { name, .. } => write!(f, "Call({name})"),
        }
    }
}

/// One annotated operation, as registered at link time.
#[derive(Debug)]
pub struct OperationEntry {
    /// The stable name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// How it is undone.
    pub compensation: Compensation,
    /// Its `probe`, callable from the record alone (non-idempotent operations
    /// with `probe = f`).
    pub probe: Option<ProbeFn>,
    /// Where it is defined.
    pub location: Location,
}

/// Every annotated operation linked into this program.
#[distributed_slice]
pub static OPERATIONS: [OperationEntry];

/// What recovery does with a workflow whose process died mid-way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recover {
    /// Run it again from its recorded input; completed steps replay.
    Resume,
    /// Undo its completed steps, newest first.
    Rollback,
}

/// Runs a workflow again from its recorded input (JSON of its arguments).
pub type ResumeFn = fn(Vec<u8>) -> BoxFuture<'static, Result<(), String>>;

/// One `#[workflow]`, as registered at link time.
#[derive(Debug)]
pub struct WorkflowEntry {
    /// The workflow's stable name.
    pub name: &'static str,
    /// `recover = resume | rollback`.
    pub recover: Recover,
    /// `rollback = continue`: a dead-lettered compensation does not stop the
    /// rollback (default: it does).
    pub continue_past_dead_letters: bool,
    /// `deadline = "15m"`: not completed this long after it started, it is
    /// rolled back.
    pub deadline: Option<std::time::Duration>,
    /// Decodes the input and calls the workflow.
    pub resume: ResumeFn,
}

/// Every workflow linked into this program.
#[distributed_slice]
pub static WORKFLOWS: [WorkflowEntry];

/// The operations of this program, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    by_name: HashMap<&'static str, &'static OperationEntry>,
    workflows: HashMap<&'static str, &'static WorkflowEntry>,
}

impl Catalog {
    /// Indexes [`OPERATIONS`].
    ///
    /// # Errors
    /// [`Error::DuplicateOperation`] naming both definitions when two share a name.
    pub fn load() -> Result<Self, Error> {
        let mut catalog = Self::from_entries(OPERATIONS.iter())?;
        catalog.workflows = WORKFLOWS.iter().map(|w| (w.name, w)).collect();
        Ok(catalog)
    }

    /// The workflow named `name`, if it is linked into this program.
    pub fn workflow(&self, name: &str) -> Option<&'static WorkflowEntry> {
        self.workflows.get(name).copied()
    }

    fn from_entries(entries: impl Iterator<Item = &'static OperationEntry>) -> Result<Self, Error> {
        let mut by_name: HashMap<&'static str, &'static OperationEntry> = HashMap::new();
        for entry in entries {
            if let Some(first) = by_name.insert(entry.name, entry) {
                let (first, second) = order(first.location, entry.location);
                return Err(Error::DuplicateOperation {
                    name: entry.name.to_owned(),
                    first,
                    second,
                });
            }
        }
        Ok(Catalog {
            by_name,
            workflows: HashMap::new(),
        })
    }

    /// The operation named `name`, if it is linked into this program.
    pub fn get(&self, name: &str) -> Option<&'static OperationEntry> {
        self.by_name.get(name).copied()
    }

    /// How many operations are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Link order is arbitrary; name the two sites in a stable order.
fn order(a: Location, b: Location) -> (Location, Location) {
    if (a.file, a.line) <= (b.file, b.line) {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: OperationEntry = OperationEntry {
        name: "shop::charge",
        kind: Kind::NonIdempotent,
        compensation: Compensation::Noop,
        probe: None,
        location: Location {
            module: "shop",
            file: "src/shop.rs",
            line: 10,
        },
    };
    static B: OperationEntry = OperationEntry {
        name: "shop::charge",
        kind: Kind::Idempotent,
        compensation: Compensation::None,
        probe: None,
        location: Location {
            module: "billing",
            file: "src/billing.rs",
            line: 3,
        },
    };

    #[test]
    fn duplicate_names_name_both_sites() {
        let err = Catalog::from_entries([&A, &B].into_iter()).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            msg,
            "two operations are named `shop::charge`: `billing` (src/billing.rs:3) and `shop` (src/shop.rs:10); give one of them `name = \"...\"`"
        );
    }
}
