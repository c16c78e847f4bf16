-- wrk: each request a join by a new user (tokens from TOKENS, one per line,
-- minted beforehand), each thread taking its own share of the tokens.
local tokens, event, next_token, last = {}, os.getenv("EVENT"), 0, 0
local threads = tonumber(os.getenv("THREADS") or "2")
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local i = 0
  for line in io.lines(os.getenv("TOKENS")) do
    if i % threads == id then tokens[#tokens + 1] = line end
    i = i + 1
  end
  last = #tokens
end

function request()
  next_token = next_token % last + 1
  return wrk.format("POST", "/v1/events/" .. event .. "/join", {
    ["Authorization"] = "Bearer " .. tokens[next_token],
    ["Idempotency-Key"] = id .. "-" .. next_token,
  })
end
