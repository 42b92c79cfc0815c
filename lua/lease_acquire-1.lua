--[[
  lease_acquire-1.lua: take or renew a partition lease.

  KEYS[1]  lease key            cdp:lease:{pN}
  ARGV[1]  worker id
  ARGV[2]  lease time to live, ms

  Returns 1 when the caller holds the lease for ARGV[2] ms from now, 0 when another
  worker holds it.
]]
local rcall = redis.call
local lease_key, owner, ttl = KEYS[1], ARGV[1], ARGV[2]
local holder = rcall("GET", lease_key)
if holder == owner then
  rcall("PEXPIRE", lease_key, ttl)
  return 1
end
if not holder then
  rcall("SET", lease_key, owner, "PX", ttl)
  return 1
end
return 0
