--[[
  identifier_repoint-1.lua: step 3 of the cross-slot merge (cdp/merge.py): an
  identifier of loser L names L's survivor from now on, if it still names L or a
  profile L absorbed (or one on the way to the survivor). A compare-and-set: an
  identifier that has moved on (erased, linked elsewhere since) is left alone, and a
  second run changes nothing.

  KEYS[1]  the identifier             cdp:identifier:{<typed id>}
  ARGV[1]  the survivor
  ARGV[2..]  the canonical ids it may still name (L first)

  Returns  1 when repointed now, 0 otherwise
]]
local rcall = redis.call
local current = rcall("GET", KEYS[1])
if not current or current == ARGV[1] then return 0 end
for i = 2, #ARGV do
  if current == ARGV[i] then
    rcall("SET", KEYS[1], ARGV[1])
    return 1
  end
end
return 0
