--[[
  identifier_release-1.lua: remove an identifier from the index only if it still names
  the given profile (compare-and-delete): a claim given back, an erased profile's
  identifier, never an entry another worker has re-pointed since.

  KEYS[1]  identifier key       cdp:identifier:{<type>:<value>}
  ARGV[1]  canonical id the caller expects it to name

  Returns 1 when deleted, 0 when it named another profile or nothing.
]]
local id_key, cid = KEYS[1], ARGV[1]
if redis.call("GET", id_key) == cid then
  redis.call("DEL", id_key)
  return 1
end
return 0
