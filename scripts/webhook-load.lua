-- Telegram updates for the webhook example: unique update ids per wrk thread, 50 users.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  counter = id * 100000000
end
request = function()
  counter = counter + 1
  local user = 1000 + (counter % 50)
  local body = string.format('{"update_id":%d,"message":{"message_id":%d,"date":1700000000,"text":"hi","from":{"id":%d,"is_bot":false,"first_name":"Ada"},"chat":{"id":%d,"type":"private"}}}', counter, counter, user, user)
  return wrk.format("POST", "/telegram", {["Content-Type"]="application/json", ["X-Telegram-Bot-Api-Secret-Token"]="change-me"}, body)
end
