-- wrk script: Portal's `POST /backup`, `{"clientId", "backupMethod": "METHOD-CURVE", "share"}`,
-- with the ids and the 2 KB shares `sharevault bench` stores (src/bench/payload.rs), byte for
-- byte: on a data dir the bench populated, every backup rewrites a share with the bytes it
-- already holds, so later bench runs still check their fetches.
--
--   wrk -t2 -c32 -d10s --latency -s bench/wrk/backup.lua http://127.0.0.1:PORT \
--       -- clients=10000 threads=2 secret_file=DIR.keys/webhook-secret
--
-- Arguments after `--` (key=value), else the environment: clients (CLIENTS, default 10000),
-- secret_file (WEBHOOK_SECRET_FILE), share_bytes (SHARE_BYTES, default 2048), threads (THREADS,
-- wrk's -t, read from its command line if not given).
--
-- Each thread owns a slice of the clients and cycles through its 8 x slice requests, all
-- precomputed in init(): request k goes to client k mod slice, with the method and curve moving
-- on by one from one request to the next and from one pass to the next, so that each pass of
-- `slice` requests reaches every client once and 8 passes every client's every method and
-- curve. One cycle over all threads stores all 8 shares of every client (how run fills the
-- in-memory stand-in).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local portal = dofile(dir .. "portal.lua")
local report = dofile(dir .. "report.lua")

local threads = {}

function setup(thread)
    report.setup(thread, threads)
    portal.share_flag(thread)
end

local requests, count, at = {}, 0, 0
local started = false
local settings

function init(args)
    settings = portal.settings(args)
    mode, clients = "backup", settings.clients
    local headers = portal.headers(settings.secret)
    local path = wrk.path:gsub("/+$", "") .. "/backup"
    local first, span = portal.slice(settings.clients, settings.threads, id)
    if span < 1 then
        error("more threads than clients")
    end
    local kinds = portal.SHARES_PER_CLIENT
    for k = 0, kinds * span - 1 do
        local c = k % span
        local kind = (math.floor(k / span) + c) % kinds
        local method, curve = math.floor(kind / #portal.CURVES), kind % #portal.CURVES
        requests[k + 1] = wrk.format("POST", path, headers,
            portal.backup_body(first + c, method, curve, settings.share_bytes))
    end
    count = kinds * span
    collectgarbage()
    report.init_done(settings.threads)
    portal.ready(id, settings.threads)
end

function request()
    if not started then
        started = portal.wait_start(settings.threads)
        if not started then
            return requests[1] -- wrk's check of the request, on its main thread
        end
    end
    at = at + 1
    if at > count then
        at = 1
    end
    return requests[at]
end

function done(summary, latency, _)
    report.done(threads, summary, latency)
end
