--[[
  histogram_add-1.lua: add one worker's flush of a histogram (cdp.metrics.Observed) to
  its shared hash, all of it or none: a flush whose reply was lost is never sent again
  (workers/ticking.py), so a flush either counted once or not at all.

  KEYS[1]  the histogram's hash        cdp:metrics:hist:<name>
  ARGV[1]  the sum of the values observed (a float, HINCRBYFLOAT "sum")
  ARGV[2..] field, increment, field, increment... (the buckets observed into, "count")

  Returns 1.
]]
local rcall = redis.call
local hist = KEYS[1]
rcall("HINCRBYFLOAT", hist, "sum", ARGV[1])
for i = 2, #ARGV, 2 do
  rcall("HINCRBY", hist, ARGV[i], ARGV[i + 1])
end
return 1
