-- Store::claim, mirroring tempox::record::plan_claim.
-- KEYS: record, due, exp, wf (one bucket)
-- ARGV: id, kind, fingerprint, input, lease_ms, on_expired, workflow ('' = none),
--       step ('' = none), the prefix of the bucket's status sets
-- Returns {outcome, previous status or '', record}; outcome is one of
-- acquired, existing, marked_unknown; or {'fresh', now} when there was no
-- record: the new one is plan_claim's for no record at the server's now, and
-- the client builds it from its request instead of reading it back.
local K = {rec = KEYS[1], due = KEYS[2], exp = KEYS[3], wf = KEYS[4], st = ARGV[9]}
local id, kind, fingerprint, input = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lease, on_expired, workflow, step = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local now = now_ms()
local old = load(K.rec)
-- A record past its retention counts as none.
local existing = old
if existing ~= nil and retention_passed(existing, now) then existing = nil end

local function fresh(previous)
  local lease_until = uadd(now, lease, U64_MAX)
  local r = {
    id = id, kind = kind, fingerprint = fingerprint, input = input,
    status = STATUS.Pending,
    token = next_token(previous and previous.token, now),
    lease_until = lease_until, due_at = lease_until,
    attempts = '1', created_at = now, updated_at = now,
  }
  if workflow ~= '' then r.workflow = workflow end
  if step ~= '' then r.step = step end
  if previous ~= nil then
    r.error = previous.error
    r.note = previous.note
    r.created_at = previous.created_at
    r.attempts = uadd(previous.attempts, '1', U32_MAX)
  end
  return r
end

if existing == nil then
  write(K, id, old, fresh(nil))
  return {'fresh', now}
end

-- A released key is free for any request (invariant 8).
if existing.status == STATUS.Released then
  local r = fresh(existing)
  write(K, id, old, r)
  return {'acquired', STATUS.Released, flat(id, r)}
end

-- Invariant 2: an expired claim is only taken over by the same request.
if existing.status == STATUS.Pending and lease_expired(existing, now)
    and existing.fingerprint == fingerprint then
  if on_expired == 'take_over' then
    local r = fresh(existing)
    write(K, id, old, r)
    return {'acquired', STATUS.Pending, flat(id, r)}
  end
  local r = copy(existing)
  r.status = STATUS.OutcomeUnknown
  r.lease_until = nil
  -- Due at once: the reconciler raises the alert for it.
  r.due_at = now
  r.updated_at = now
  r.error = LEASE_EXPIRED_ERROR
  write(K, id, old, r)
  return {'marked_unknown', '', flat(id, r)}
end

return {'existing', '', flat(id, existing)}
