-- Portal-shaped requests for wrk, byte for byte those of `sharevault bench` (src/bench/payload.rs):
-- the same client ids, `METHOD-CURVE` names and custodian shares, so that a data dir the bench
-- populated answers every fetch with 8 shares, and a backup rewrites a share with the bytes it
-- already holds (later `sharevault bench --skip-populate` runs still check every answer).
--
-- Loaded by backup.lua and fetch.lua with dofile; wrk embeds LuaJIT, whose 64-bit integers
-- (the ULL literals and `bit` on uint64_t) reproduce the bench's xorshift64* generator.

local ffi = require("ffi")
local bit = require("bit")
local band, bor, bxor, lshift, rshift = bit.band, bit.bor, bit.bxor, bit.lshift, bit.rshift

local M = {}

-- Portal's backup methods and curves, in the bench's order (payload::METHODS, payload::CURVES).
M.METHODS = { "GDRIVE", "ICLOUD", "PASSWORD", "PASSKEY" }
M.CURVES = { "SECP256K1", "ED25519" }
M.SHARES_PER_CLIENT = #M.METHODS * #M.CURVES

local SEED_MUL = 0x9E3779B97F4A7C15ULL
local OUT_MUL = 0x2545F4914F6CDD1DULL
local DIGITS = ffi.new("const uint8_t[16]", { 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 97, 98, 99, 100, 101, 102 })
local buffer_chars = 0
local buffer

-- payload::Rng::hex: `chars` hex digits, each 64-bit draw giving 16 digits low nibble first, the
-- last draw cut short. Returns the string and the generator's new state.
local function hex(state, chars)
    if chars + 16 > buffer_chars then
        buffer_chars = chars + 16
        buffer = ffi.new("uint8_t[?]", buffer_chars)
    end
    local pos = 0
    while pos < chars do
        local x = state
        x = bxor(x, rshift(x, 12))
        x = bxor(x, lshift(x, 25))
        x = bxor(x, rshift(x, 27))
        state = x
        local y = x * OUT_MUL
        local lo, hi = tonumber(band(y, 0xFFFFFFFFULL)), tonumber(rshift(y, 32))
        for i = 0, 7 do
            buffer[pos + i] = DIGITS[band(lo, 15)]
            lo = rshift(lo, 4)
        end
        for i = 8, 15 do
            buffer[pos + i] = DIGITS[band(hi, 15)]
            hi = rshift(hi, 4)
        end
        pos = pos + 16
    end
    return ffi.string(buffer, chars), state
end

-- payload::client_id: clients are numbered from 0.
function M.client_id(client)
    return string.format("bench-client-%07d", client)
end

-- payload::custodian_method; method and curve count from 0.
function M.custodian_method(method, curve)
    return M.METHODS[method + 1] .. "-" .. M.CURVES[curve + 1]
end

function M.pair_id(client, method, curve)
    return string.format("bsp-%07d-%d-%d", client, method, curve)
end

-- payload::share: the custodian share of `bytes` bytes (2048 in the bench), Portal's JSON.
function M.share(client, method, curve, bytes)
    local state = bor(((ffi.new("uint64_t", client) * 256ULL) + method * 16 + curve) * SEED_MUL, 1ULL)
    local h = {}
    for i = 1, 6 do
        h[i], state = hex(state, 64)
    end
    local head = string.format(
        '{"backupSharePairId":"%s","clientId":"%s","curve":"%s","ssid":"%s","bip32ChainCode":"%s",'
            .. '"pubkey":{"X":"%s","Y":"%s"},"partialPubkey":{"X":"%s","Y":"%s"},"share":"',
        M.pair_id(client, method, curve), M.client_id(client), M.CURVES[curve + 1],
        h[1], h[2], h[3], h[4], h[5], h[6])
    local tail = '"}'
    local filler = math.max(bytes - (#head + #tail), 64)
    return head .. (hex(state, filler)) .. tail
end

-- A share as a JSON string's contents: it holds quotes and [0-9a-zA-Z:{},_-] only.
function M.escape(share)
    return (share:gsub('"', '\\"'))
end

-- The body Portal posts to /backup.
function M.backup_body(client, method, curve, bytes)
    return string.format('{"clientId":"%s","backupMethod":"%s","share":"%s"}',
        M.client_id(client), M.custodian_method(method, curve),
        M.escape(M.share(client, method, curve, bytes)))
end

-- The body Portal posts to /backup/fetch.
function M.fetch_body(client)
    return string.format('{"clientId":"%s"}', M.client_id(client))
end

-- Portal's headers; the secret is compared for equality.
function M.headers(secret)
    return {
        ["Content-Type"] = "application/json",
        ["Accept"] = "application/json",
        ["X-Webhook-Secret"] = secret,
    }
end

-- wrk's -t, from its command line (wrk tells its scripts neither the number of threads nor
-- the options): 2, wrk's default, if not given.
local function wrk_threads()
    local f = io.open("/proc/self/cmdline", "rb")
    if not f then
        return nil
    end
    local argv = {}
    for a in f:read("*a"):gmatch("([^%z]*)%z") do
        argv[#argv + 1] = a
    end
    f:close()
    for i = 2, #argv do
        local a = argv[i]
        if a == "--" then
            break
        end
        local v = a:match("^%-t(%d+)$") or a:match("^%-%-threads=(%d+)$")
        if not v and (a == "-t" or a == "--threads") then
            v = argv[i + 1]
        end
        if v then
            return tonumber(v)
        end
    end
    return 2
end

-- Settings from the script's arguments (`key=value` after wrk's `--`), else the environment:
-- clients (CLIENTS, default 10000), secret_file (WEBHOOK_SECRET_FILE), share_bytes (SHARE_BYTES,
-- default 2048), threads (THREADS; wrk's -t, which it must equal, read from wrk's command line
-- if not given), check (CHECK=1: fetch.lua checks every answer).
function M.settings(args)
    local given = {}
    for _, a in ipairs(args or {}) do
        local k, v = a:match("^([%w_]+)=(.*)$")
        if not k then
            error("argument " .. a .. ": expected key=value")
        end
        given[k] = v
    end
    local function pick(key, env, default)
        local v = given[key] or os.getenv(env)
        if v == nil or v == "" then
            return default
        end
        return v
    end
    local s = {
        clients = tonumber(pick("clients", "CLIENTS", "10000")),
        secret_file = pick("secret_file", "WEBHOOK_SECRET_FILE", nil),
        share_bytes = tonumber(pick("share_bytes", "SHARE_BYTES", "2048")),
        threads = tonumber(pick("threads", "THREADS", "0")),
        wrk_threads = wrk_threads(),
        check = pick("check", "CHECK", "0") == "1",
    }
    if not s.clients or s.clients < 1 then
        error("clients must be a positive number")
    end
    if not s.share_bytes or s.share_bytes < 1024 then
        error("share_bytes must be at least 1024, as in the bench")
    end
    if s.threads == 0 then
        s.threads = s.wrk_threads or 2
    elseif s.wrk_threads and s.threads ~= s.wrk_threads then
        error(string.format("threads=%d, but wrk runs %d threads", s.threads, s.wrk_threads))
    end
    if id and id >= s.threads then
        error(string.format("threads=%d, but wrk runs more", s.threads))
    end
    if not s.secret_file then
        error("no webhook secret: pass secret_file=FILE or set WEBHOOK_SECRET_FILE")
    end
    local f = assert(io.open(s.secret_file, "r"))
    s.secret = f:read("*a"):gsub("^%s+", ""):gsub("%s+$", "")
    f:close()
    return s
end

-- The clients a thread owns when the threads split them: [first, first + count).
function M.slice(clients, threads, id)
    threads = math.max(threads, 1)
    local first = math.floor(clients * id / threads)
    local after = math.floor(clients * (id + 1) / threads)
    return first, after - first
end

-- A start line for wrk's threads. wrk runs each thread's init() on its main thread, one after
-- the other, and starts each thread as soon as its init returns, but starts its clock only once
-- all have: requests a thread sent while a later one was still precomputing would be counted
-- over a shorter time. So the last thread's init raises a flag, and every other thread's first
-- request waits for it. The flag lives in memory the main Lua state allocates in setup() and
-- hands to each thread by address.
ffi.cdef([[
    void *calloc(size_t, size_t);
    int usleep(unsigned int);
    unsigned long pthread_self(void);
]])

-- The scripts are loaded on wrk's main thread; so are init() and the one request() wrk calls
-- there to check the request before it starts the threads.
local main_thread = ffi.C.pthread_self()

local flag_address

-- In setup(thread), on wrk's main Lua state.
function M.share_flag(thread)
    if not flag_address then
        local p = ffi.C.calloc(1, 8) -- lives until wrk exits
        flag_address = tostring(tonumber(ffi.cast("uintptr_t", p)))
    end
    thread:set("start_flag_address", flag_address)
end

local function flag()
    local a = start_flag_address
    if not a then
        return nil
    end
    return ffi.cast("volatile int32_t *", ffi.cast("uintptr_t", tonumber(a)))
end

-- At the end of init(): the last thread raises the flag.
function M.ready(id, threads)
    local f = flag()
    if f and id == threads - 1 then
        f[0] = 1
    end
end

-- In request(), until it returns true once: on a thread wrk started, waits (at most 120 s) for
-- the last thread's flag; on wrk's main thread, returns false at once.
function M.wait_start(threads)
    if ffi.C.pthread_self() == main_thread then
        return false
    end
    local f = flag()
    if not f or threads < 2 then
        return true
    end
    for _ = 1, 120000 do
        if f[0] == 1 then
            return true
        end
        ffi.C.usleep(1000)
    end
    return true
end

return M
