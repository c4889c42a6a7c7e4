-- wrk script: Portal's `POST /backup/fetch`, `{"clientId": ...}`, over the clients `sharevault
-- bench` populates (bench-client-0000000 ...), each thread from its own offset.
--
--   wrk -t2 -c32 -d10s --latency -s bench/wrk/fetch.lua http://127.0.0.1:PORT \
--       -- clients=10000 threads=2 secret_file=DIR.keys/webhook-secret
--
-- Arguments after `--` (key=value), else the environment: clients (CLIENTS, default 10000),
-- secret_file (WEBHOOK_SECRET_FILE), share_bytes (SHARE_BYTES, default 2048), threads (THREADS,
-- wrk's -t, read from its command line if not given), check (CHECK=1). Every request is
-- precomputed in init().
--
-- check=1 also reads every answer: it must be HTTP 200 with exactly the client's 8 shares, byte
-- for byte those the bench stored; each thread then walks its own slice of the clients, and
-- done() says how many answers were right and how many distinct clients were seen. Reading the
-- answers costs wrk time: measure without it.

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

-- check=1: the expected shares (escaped as in the JSON answer) of this thread's clients.
local expected = {}
checked, right, wrong, covered, first_wrong = 0, 0, 0, 0, ""
local seen = {}

local function note_wrong(why)
    wrong = wrong + 1
    if first_wrong == "" then
        first_wrong = why
    end
end

local function check(status, body)
    checked = checked + 1
    if status ~= 200 then
        note_wrong("HTTP " .. status .. ": " .. body:sub(1, 200))
        return
    end
    local id = body:match("bench%-client%-(%d+)")
    local client = id and tonumber(id)
    local shares = client and expected[client]
    if not shares then
        note_wrong("answer for no client of this thread: " .. body:sub(1, 200))
        return
    end
    if body:sub(1, 17) ~= '{"backupShares":[' then
        note_wrong(portal.client_id(client) .. ": not a backupShares answer")
        return
    end
    local n = 0
    for _ in body:gmatch("bsp%-") do
        n = n + 1
    end
    if n ~= portal.SHARES_PER_CLIENT then
        note_wrong(portal.client_id(client) .. ": " .. n .. " shares, expected "
            .. portal.SHARES_PER_CLIENT)
        return
    end
    for _, share in ipairs(shares) do
        if not body:find(share, 1, true) then
            note_wrong(portal.client_id(client) .. ": a share differs from the bench's")
            return
        end
    end
    right = right + 1
    if not seen[client] then
        seen[client] = true
        covered = covered + 1
    end
end

function init(args)
    settings = portal.settings(args)
    mode, clients = settings.check and "check" or "fetch", settings.clients
    local headers = portal.headers(settings.secret)
    local path = wrk.path:gsub("/+$", "") .. "/backup/fetch"
    local first, span = 0, settings.clients
    if settings.check then
        -- Each thread checks its own slice, so that together they cover every client.
        first, span = portal.slice(settings.clients, settings.threads, id)
        for client = first, first + span - 1 do
            local shares = {}
            for method = 0, #portal.METHODS - 1 do
                for curve = 0, #portal.CURVES - 1 do
                    shares[#shares + 1] = portal.escape(
                        portal.share(client, method, curve, settings.share_bytes))
                end
            end
            expected[client] = shares
        end
        function response(status, _, body)
            check(status, body)
        end
    end
    -- Every thread walks its clients from its own offset.
    local offset = settings.check and 0 or portal.slice(settings.clients, settings.threads, id)
    for i = 0, span - 1 do
        local client = first + (offset + i) % span
        requests[i + 1] = wrk.format("POST", path, headers, portal.fetch_body(client))
    end
    count = span
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
    if threads[1]:get("mode") ~= "check" then
        return
    end
    local t = { checked = 0, right = 0, wrong = 0, covered = 0, clients = 0, first_wrong = "" }
    for _, thread in ipairs(threads) do
        for _, k in ipairs({ "checked", "right", "wrong", "covered" }) do
            t[k] = t[k] + thread:get(k)
        end
        t.clients = thread:get("clients")
        if t.first_wrong == "" then
            t.first_wrong = thread:get("first_wrong")
        end
    end
    io.write(string.format("check: %d answers, %d right (8 shares, byte for byte), %d wrong; "
        .. "%d of %d clients seen\n", t.checked, t.right, t.wrong, t.covered, t.clients))
    if t.first_wrong ~= "" then
        io.write("check: first wrong answer: " .. t.first_wrong .. "\n")
    end
    io.write(string.format("wrk-check answers=%d right=%d wrong=%d covered=%d clients=%d\n",
        t.checked, t.right, t.wrong, t.covered, t.clients))
end
