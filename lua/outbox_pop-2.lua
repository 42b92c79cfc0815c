--[[
  outbox_pop-2.lua: remove relayed entries from the head of a profile's outbox, only
  while the head is the entry relayed (compare-and-pop), and give the relay's lease
  back once the outbox is empty.

  Entries are pushed at the tail and popped at the head only, so an entry relayed is
  either still the head or was popped by another relay: what does not match ends the
  pops (nothing pushed after it is touched).

  KEYS[1]  outbox            cdp:profile:{<cid>}:outbox
  KEYS[2]  the relay's lease cdp:profile:{<cid>}:outbox:relay

  ARGV[1]  the relay's owner id (the lease is deleted if it names it and the outbox is
           empty)
  ARGV[2..] the entries relayed, raw, in outbox order

  Returns the outbox's length after the pops.
]]
local rcall = redis.call
local outbox, lease = KEYS[1], KEYS[2]
for i = 2, #ARGV do
  if rcall("LINDEX", outbox, 0) ~= ARGV[i] then break end
  rcall("LPOP", outbox)
end
local left = rcall("LLEN", outbox)
if left == 0 and rcall("GET", lease) == ARGV[1] then rcall("DEL", lease) end
return left
