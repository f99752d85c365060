//! The Lua scripts, built once per process: `common.lua` (helpers and the
//! tables generated from [`crate::record`]) followed by each script's own body.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use ::redis::{Cmd, Script, ToRedisArgs};

use crate::key::Fingerprint;
use crate::record::{
    ClaimRequest, Claimed, Kind, OnExpired, Record, RecordId, Status, TRANSITIONS, Timestamp,
    plan_claim,
};

/// Every script a [`RedisStore`](super::RedisStore) runs.
pub(super) struct Scripts {
    /// Claims, transitions and lease renewals, any number in one call
    /// (`ops.lua`).
    pub(super) ops: Script,
    pub(super) due_scan: Script,
    pub(super) due_fetch: Script,
    pub(super) expire_count: Script,
    pub(super) expire: Script,
    pub(super) list: Script,
    pub(super) init: Script,
}

impl Scripts {
    /// Whether what `script` writes must reach the replicas before the
    /// caller learns it was done: claims, outcomes and lease renewals, all
    /// sent by `ops`. (A removal of an expired record or a layout record that
    /// a failover loses is made again.)
    pub(super) fn waits_for_replicas(&self, script: &Script) -> bool {
        std::ptr::eq(&self.ops, script)
    }

    /// Every script, to load them all at once.
    pub(super) fn all(&self) -> [&Script; 7] {
        [
            &self.ops,
            &self.due_scan,
            &self.due_fetch,
            &self.expire_count,
            &self.expire,
            &self.list,
            &self.init,
        ]
    }
}

/// One call of a script: `EVALSHA <sha> <number of keys> <keys> <args>`,
/// written straight into the command that is sent (no per-argument copies).
pub(super) struct ScriptCall {
    pub(super) script: &'static Script,
    pub(super) cmd: Cmd,
}

impl ScriptCall {
    /// A call of `script` with `keys`; its arguments follow with [`arg`](Self::arg).
    pub(super) fn new(script: &'static Script, keys: &[&str]) -> Self {
        // Room for the keys and a record's worth of short arguments.
        let bytes = 128 + keys.iter().map(|k| k.len()).sum::<usize>();
        let mut cmd = Cmd::with_capacity(3 + keys.len() + 20, bytes);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        ScriptCall { script, cmd }
    }

    /// Appends an argument (`ARGV[i]`).
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }
}

/// The scripts, built on first use.
pub(super) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let common = common();
        let build = |body: &str| Script::new(&format!("{common}\n{body}"));
        Scripts {
            ops: build(&format!(
                "-- The server's clock, read once per call.\nlocal now = now_ms()\n{}\n{}\n{}\n{}",
                include_str!("claim.lua"),
                include_str!("transition.lua"),
                include_str!("renew.lua"),
                include_str!("ops.lua")
            )),
            due_scan: build(include_str!("due_scan.lua")),
            due_fetch: build(include_str!("due_fetch.lua")),
            expire_count: build(include_str!("expire_count.lua")),
            expire: build(include_str!("expire.lua")),
            list: build(include_str!("list.lua")),
            init: build(include_str!("init.lua")),
        }
    })
}

/// `common.lua` with its generated tables filled in.
fn common() -> String {
    let mut legal = String::from("|");
    for (from, to) in TRANSITIONS {
        let _ = write!(legal, "{from}>{to}|");
    }
    let set = |keep: fn(Status) -> bool| {
        let mut out = String::new();
        for &s in Status::ALL.iter().filter(|&&s| keep(s)) {
            let _ = write!(out, "[{}] = true, ", lua_string(s.as_str()));
        }
        out
    };
    let mut names = String::new();
    for &s in Status::ALL {
        let _ = write!(names, "{s:?} = {}, ", lua_string(s.as_str()));
    }
    include_str!("common.lua")
        .replace("--[[LEGAL]]", &lua_string(&legal))
        .replace("--[[FINAL]]", &set(Status::is_final))
        .replace("--[[ACTIVE]]", &set(Status::is_active))
        .replace("--[[DEAD_LETTER]]", &set(Status::is_dead_letter))
        .replace("--[[STATUS]]", &names)
        .replace(
            "--[[LEASE_EXPIRED_ERROR]]",
            &lua_string(&lease_expired_error()),
        )
}

/// The error `plan_claim` records when it parks an expired non-idempotent
/// call, read from `plan_claim` itself so the message lives in one place.
fn lease_expired_error() -> String {
    let id = RecordId::from_parts("tempox", "probe");
    let fingerprint = Fingerprint::from_bytes([0; 16]);
    let held = Record {
        id: id.clone(),
        kind: Kind::NonIdempotent,
        fingerprint,
        input: crate::record::Blob::default(),
        output: None,
        error: None,
        status: Status::Pending,
        token: 1,
        lease_until: Some(Timestamp::from_millis(1)),
        attempts: 1,
        workflow: None,
        step: None,
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
        due_at: Some(Timestamp::from_millis(1)),
        expires_at: None,
        note: None,
    };
    let req = ClaimRequest {
        id,
        kind: Kind::NonIdempotent,
        fingerprint,
        input: crate::record::Blob::default(),
        lease: Duration::from_secs(1),
        on_expired: OnExpired::MarkUnknown,
        workflow: None,
        step: None,
    };
    match plan_claim(Some(&held), &req, Timestamp::from_millis(2)) {
        Claimed::MarkedUnknown(r) => r.error.unwrap_or_default(),
        _ => String::new(),
    }
}

/// `s` as a Lua string literal (every byte escaped as `\ddd` but letters,
/// digits, `_`, `>`, `|`, `:` and spaces).
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'>' | b'|' | b':' | b' ') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:03}");
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tables_name_every_legal_transition() {
        let common = common();
        for (from, to) in TRANSITIONS {
            assert!(common.contains(&format!("|{from}>{to}|")), "{from}>{to}");
        }
        assert!(common.contains("OutcomeUnknown = \"outcome_unknown\""));
        assert!(!common.contains("--[["), "a placeholder was left unfilled");
        assert!(common.contains("\"lease expired before the outcome was recorded\""));
    }

    #[test]
    fn lua_strings_escape_what_lua_could_misread() {
        assert_eq!(lua_string("a\"b\n\\"), "\"a\\034b\\010\\092\"");
    }
}
