-- includes/poison.lua: refusing one event without refusing its partition.
-- A failure caused by the event itself (data of its own that the script cannot
-- handle, a key it names holding something unexpected) is raised with
-- poison(reason); apply_batch catches it and answers with the error code CDP_POISON,
-- on which the worker parks that event in cdp:events:dead. Every other failure (OOM,
-- READONLY, a bug) reaches the worker as Redis reported it, and the worker retries
-- the batch later: only the event's own fault ever takes it out of the pipeline.

local POISON_CODE = "CDP_POISON"
local POISON = {}  -- the key marking a raised table as a refusal

local function poison(reason) error({[POISON] = reason}, 0) end

-- The refusal reason carried by a caught error, or nil for any other error.
local function poison_reason(err)
  if type(err) == "table" then return err[POISON] end
  return nil
end
