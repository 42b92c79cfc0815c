--[[
  metrics_tail-1.lua: add one pass of the tail counter (cdp.metrics_tail) to its hash,
  only if the stream's cursor is still where the pass began reading (compare-and-set:
  two runners never count an entry twice; the loser's pass is dropped).

  KEYS[1]  the tail counter's hash   cdp:metrics:tail
  ARGV[1]  the cursor's field        cursor:<stream>
  ARGV[2]  the cursor the pass read after ("" when none was saved yet)
  ARGV[3]  the last entry id the pass counted (the new cursor)
  ARGV[4..] field, increment, field, increment... (the pass's counts)

  Returns 1 when the counts and the cursor were written, 0 when the cursor had moved.
]]
local key, field, expected, cursor = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local current = redis.call("HGET", key, field) or ""
if current ~= expected then return 0 end
redis.call("HSET", key, field, cursor)
for i = 4, #ARGV, 2 do
  redis.call("HINCRBY", key, ARGV[i], ARGV[i + 1])
end
return 1
