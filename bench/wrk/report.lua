-- What backup.lua and fetch.lua print in done(): the latency percentiles, and one line for
-- bench/wrk/run to read. Loaded with dofile.

local M = {}

-- In setup(thread), on wrk's main Lua state: numbers the threads from 0, keeps them for done(),
-- and notes the CPU clock before the first thread's init().
function M.setup(thread, threads)
    if #threads == 0 then
        setup_clock = os.clock()
    end
    thread:set("id", #threads)
    threads[#threads + 1] = thread
end

-- At the end of init(): the last thread notes the CPU clock. wrk runs every init() on its main
-- thread before it starts measuring, so the CPU from the first setup() to here is wrk's
-- precomputing, not its load (os.clock is the whole process's CPU time).
function M.init_done(threads)
    if id == threads - 1 then
        init_clock = os.clock()
    end
end

function M.done(threads, summary, latency)
    local last = threads[#threads]:get("init_clock")
    local init_cpu = last and (last - setup_clock) or 0
    local e = summary.errors
    local secs = summary.duration / 1e6
    local p50, p99, p999 = latency:percentile(50), latency:percentile(99), latency:percentile(99.9)
    local ok = summary.requests - e.status
    io.write(string.format("latency: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
        p50 / 1000, p99 / 1000, p999 / 1000, latency.max / 1000))
    io.write(string.format("answers: %d in %.2f s, %d not 2xx/3xx, %.0f 2xx/3xx per second; "
        .. "socket errors: connect %d, read %d, write %d, timeout %d; wrk init %.2f s CPU\n",
        summary.requests, secs, e.status, ok / secs, e.connect, e.read, e.write, e.timeout,
        init_cpu))
    io.write(string.format("wrk-result op=%s clients=%d requests=%d duration_us=%d non2xx=%d "
        .. "socket_errors=%d p50_us=%d p99_us=%d p999_us=%d init_cpu_s=%.3f\n",
        threads[1]:get("mode"), threads[1]:get("clients"), summary.requests, summary.duration,
        e.status, e.connect + e.read + e.write + e.timeout, p50, p99, p999, init_cpu))
end

return M
