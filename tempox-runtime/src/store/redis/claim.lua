-- Store::claim, mirroring tempox::record::plan_claim.
-- K: the record's key and its bucket's (see write); the arguments of the
-- request: id, kind, fingerprint, input, lease_ms, on_expired,
-- workflow ('' = none), step ('' = none), nonce (the claim's own number: a
-- claim taken is marked with it and the status it had before, in the field
-- `claim`, so that a caller whose reply was lost can give it back)
-- Returns {outcome, previous status or '', record}; outcome is one of
-- acquired, existing, marked_unknown; or {'fresh', now} when there was no
-- record: the new one is plan_claim's for no record at the server's now, and
-- the client builds it from its request instead of reading it back.
-- What every new record of this script call shares: its token, and the end of its
-- lease for each lease length asked (usually one).
local first_token = next_token(nil, now)
local lease_ends = {}

local function claim(K, id, kind, fingerprint, input, lease, on_expired, workflow, step, nonce)
  local rec = K.rec
  -- The common case, a key never seen: written field by field, no record
  -- table built (the same record and indexes as write(K, id, nil, fresh(nil))).
  if redis.call('EXISTS', rec) == 0 then
    local lease_until = lease_ends[lease]
    if lease_until == nil then
      lease_until = uadd(now, lease, U64_MAX)
      lease_ends[lease] = lease_until
    end
    local f = {
      'id', id, 'kind', kind, 'fingerprint', fingerprint, 'input', input,
      'status', STATUS.Pending, 'token', first_token,
      'lease_until', lease_until, 'attempts', '1',
    }
    if workflow ~= '' then f[#f + 1] = 'workflow'; f[#f + 1] = workflow end
    if step ~= '' then f[#f + 1] = 'step'; f[#f + 1] = step end
    f[#f + 1] = 'created_at'; f[#f + 1] = now
    f[#f + 1] = 'updated_at'; f[#f + 1] = now
    f[#f + 1] = 'due_at'; f[#f + 1] = lease_until
    f[#f + 1] = 'claim'; f[#f + 1] = nonce .. '|'
    redis.call('HSET', rec, unpack(f))
    redis.call('ZADD', K.due, lease_until, id)
    -- Scores are given as strings: a Lua number is formatted on every call.
    redis.call('ZADD', K.st .. STATUS.Pending, '0', id)
    if workflow ~= '' then redis.call('ZADD', K.wf, '0', workflow .. '\0' .. id) end
    return {'fresh', now}
  end

  local old = load_checked(rec, id)
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
    redis.call('HSET', rec, 'claim', nonce .. '|')
    return {'fresh', now}
  end

  -- A released key is free for any request (invariant 8).
  if existing.status == STATUS.Released then
    local r = fresh(existing)
    write(K, id, old, r)
    redis.call('HSET', rec, 'claim', nonce .. '|' .. STATUS.Released)
    return {'acquired', STATUS.Released, flat(id, r)}
  end

  -- Invariant 2: an expired claim is only taken over by the same request.
  if existing.status == STATUS.Pending and lease_expired(existing, now)
      and existing.fingerprint == fingerprint then
    if on_expired == 'take_over' then
      local r = fresh(existing)
      write(K, id, old, r)
      redis.call('HSET', rec, 'claim', nonce .. '|' .. STATUS.Pending)
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
end

-- Which claim holds a record: {'held', token, status before the claim ('' =
-- none), workflow ('' = none)} when it is pending under the claim numbered
-- nonce, else {'no'}. The caller gives it back with a transition on the
-- token (a compare-and-set: a takeover in between wins).
local function claimed_by(K, nonce)
  local h = redis.call('HMGET', K.rec, 'status', 'token', 'claim', 'workflow')
  if h[1] ~= STATUS.Pending or not h[3] then return {'no'} end
  local mark = nonce .. '|'
  if string.sub(h[3], 1, #mark) ~= mark then return {'no'} end
  return {'held', h[2], string.sub(h[3], #mark + 1), h[4] or ''}
end
