--[=[
  identifier_release-1.lua: give back a claim on an identifier (compare-and-delete).

  The profile protocol (cdp/pipeline/profile_apply.py) claims an unknown identifier
  for a profile with SET NX before applying; a claim it cannot keep (another claim of
  the same event was lost, or apply_profile refused the link by a guard rail, or the
  event was a duplicate) is released here: the key is deleted only if it still names
  that profile, so a claim that has moved on (repointed by a merge, taken by another
  worker after a release) is left alone.

  KEYS[1]  the identifier                 cdp:identifier:{<type>:<value>}
  ARGV[1]  the canonical id the claim named

  Returns  1 when deleted, 0 when it named something else (or nothing)
]=]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
