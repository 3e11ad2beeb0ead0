// Stand-alone bench of the generated engine: no Python in the loop (tb/fastbench.py builds it
// with the engine's Verilog and engine_top.sv by `verilator --cc --exe --build` and reads what
// it writes; docs/verification.md).
//
// Plusargs: +inputs=FILE (hex int16 words, one a line, N vectors of n_in words), +n=N,
// +n_in=I +n_out=O (the words of an input and of an output vector, at most TB_IN and TB_OUT,
// which are their defaults: a loadable engine's bench serves every network of its shape),
// +out=FILE (per vector one line: cycles, TB_LAYERS layer_cycles, n_out outputs, then the clock
// cycle of its last output word (counted from the end of the first reset), all decimal),
// +stall_in=P +stall_out=P (per mille: chance that the driver holds i_valid low / the monitor
// holds o_ready low in a cycle), +seed=S, +reset_mid=1 (vector 0 in, a few compute cycles,
// reset, then every vector cleanly), +max_cycles=C (per vector, a hang guard). The engine's
// memories load their contents from +mems=DIR ($readmemh in engine.sv, written by fastbench).
// TB_IN, TB_OUT, TB_LAYERS, TB_LANES: compile-time sizes (-D), the same as engine_top's.
//
// TB_LANES words move a beat on i_act and o_act (the engine's io_lanes; lane j in bits
// 16j..16j+15, an input's last beat padded with zeros). Each vector's first word is offered as
// soon as the previous vector's last output word is taken (three cycles later): back to back,
// so the difference of two vectors' last-word cycles is the engine's period per input.
//
// The cocotb bench's protocol (tb/cocotb_engine.py), cycle for cycle: each cycle the stimuli
// are set after the falling edge, the logic settles (one eval()), valid/ready are sampled (a
// word moves at the next rising edge where both are high) and the clock rises; valid stays up
// until its word is taken. One eval() per half cycle: the falling edge is evaluated with the
// next cycle's stimuli. Exit status 0 after the last vector, 1 with one line on a hang, a bad
// file or `busy` still high after a vector's last output word.
#include "Vengine_top.h"
#include "verilated.h"

#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if !defined(TB_IN) || !defined(TB_OUT) || !defined(TB_LAYERS) || !defined(TB_LANES)
#error "build with -DTB_IN=.. -DTB_OUT=.. -DTB_LAYERS=.. -DTB_LANES=.. (tb/fastbench.py does)"
#endif

namespace {

// The bench's CPU time: cycles per CPU second do not depend on how busy the machine is.
double cpu_seconds() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

[[noreturn]] void fatal(const std::string& msg) {
    fprintf(stdout, "engine_tb: error: %s\n", msg.c_str());
    fflush(stdout);
    exit(1);
}

// 16-bit lane j / 32-bit word j of a port of any width (Verilator: an integer up to 64 bits,
// VlWide<N> words of 32 bits above).
template <typename T> void set16(T& p, int j, uint16_t v) {
    p = static_cast<T>((p & ~(static_cast<T>(0xFFFF) << (16 * j))) | (static_cast<T>(v) << (16 * j)));
}
template <std::size_t N> void set16(VlWide<N>& p, int j, uint16_t v) {
    const int s = 16 * (j % 2);
    p[j / 2] = (p[j / 2] & ~(0xFFFFu << s)) | (static_cast<uint32_t>(v) << s);
}
template <typename T> uint16_t get16(const T& p, int j) { return static_cast<uint16_t>(p >> (16 * j)); }
template <std::size_t N> uint16_t get16(const VlWide<N>& p, int j) {
    return static_cast<uint16_t>(p[j / 2] >> (16 * (j % 2)));
}
template <typename T> uint32_t get32(const T& p, int j) { return static_cast<uint32_t>(p >> (32 * j)); }
template <std::size_t N> uint32_t get32(const VlWide<N>& p, int j) { return p[j]; }
template <typename T> void clear(T& p) { p = 0; }
template <std::size_t N> void clear(VlWide<N>& p) {
    for (std::size_t i = 0; i < N; i++) p[i] = 0;
}

// xorshift32: the stall decisions (deterministic for a seed)
uint32_t rng = 0x9e3779b9u;
bool draw(long permille) {
    if (permille == 0) return false;
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return (rng % 1000) < static_cast<uint32_t>(permille);
}

struct Bench {
    VerilatedContext* ctx;
    Vengine_top* dut;
    uint64_t edges = 0;  // rising edges so far

    // The rising edge, then the clock low: the falling edge is evaluated by the next eval().
    void rise() {
        dut->clk = 1;
        dut->eval();
        ++edges;
        dut->clk = 0;
    }
    // A whole cycle with the stimuli as they are (the logic settled after it).
    void cycle() {
        rise();
        dut->eval();
    }
    std::string plus(const char* name, const char* dflt) const {
        const std::string key = std::string(name) + "=";
        const char* v = ctx->commandArgsPlusMatch(key.c_str());
        if (!v || !*v) return dflt ? dflt : "";
        return v + key.size() + 1;  // past "+name="
    }
    long plus_int(const char* name, long dflt) const {
        const std::string s = plus(name, nullptr);
        if (s.empty()) return dflt;
        char* end = nullptr;
        const long v = strtol(s.c_str(), &end, 10);
        if (*end) fatal("+" + std::string(name) + "=" + s + " is not a number");
        return v;
    }
};

}  // namespace

int main(int argc, char** argv) {
    Bench b;
    b.ctx = new VerilatedContext;
    b.ctx->commandArgs(argc, argv);
    const std::string inputs_path = b.plus("inputs", nullptr), out_path = b.plus("out", nullptr);
    if (inputs_path.empty()) fatal("no +inputs=");
    if (out_path.empty()) fatal("no +out=");
    const long n = b.plus_int("n", -1);
    if (n < 0) fatal("no +n=");
    const long stall_in = b.plus_int("stall_in", 0), stall_out = b.plus_int("stall_out", 0);
    const long seed = b.plus_int("seed", 0), reset_mid = b.plus_int("reset_mid", 0);
    const long max_cycles = b.plus_int("max_cycles", 2000000);
    const long n_in = b.plus_int("n_in", TB_IN), n_out = b.plus_int("n_out", TB_OUT);
    if (n_in < 1 || n_in > TB_IN || n_out < 1 || n_out > TB_OUT)
        fatal("+n_in=" + std::to_string(n_in) + " +n_out=" + std::to_string(n_out) +
              ": the bench takes 1.." + std::to_string(TB_IN) + " and 1.." + std::to_string(TB_OUT));
    rng ^= static_cast<uint32_t>(seed);
    if (rng == 0) rng = 1;
    FILE* fin = fopen(inputs_path.c_str(), "r");
    if (!fin) fatal("cannot open " + inputs_path);
    FILE* fout = fopen(out_path.c_str(), "w");
    if (!fout) fatal("cannot open " + out_path);

    b.dut = new Vengine_top{b.ctx};
    Vengine_top* dut = b.dut;
    std::vector<uint16_t> vec(TB_IN), ys(TB_OUT);
    auto read_vector = [&](long k) {
        for (long j = 0; j < n_in; j++) {
            unsigned w;
            if (fscanf(fin, "%x", &w) != 1)
                fatal("inputs: vector " + std::to_string(k) + " ends at word " + std::to_string(j));
            vec[j] = static_cast<uint16_t>(w);
        }
    };
    auto set_beat = [&](long i) {  // beat i of the loaded vector (zeros past n_in)
        clear(dut->i_payload);
        for (long j = 0; j < TB_LANES; j++)
            if (i * TB_LANES + j < n_in) set16(dut->i_payload, j, vec[i * TB_LANES + j]);
    };
    const long beats = (n_in + TB_LANES - 1) / TB_LANES;

    // Reset for rising edges 1 and 2, released after edge 2 (the engine's rst follows rst_next
    // one edge later, engine_top.sv); t0 = 2, the cycles of t_last count from there.
    dut->clk = 1;
    dut->rst_next = 1;
    dut->i_valid = 0;
    dut->o_ready = 0;
    clear(dut->i_payload);
    dut->eval();
    dut->clk = 0;
    dut->eval();
    b.cycle();
    dut->rst_next = 0;
    b.cycle();
    const uint64_t t0 = b.edges;

    if (reset_mid && n > 0) {
        // an inference cut short by a reset: vector 0 in, R = 3..42 compute cycles, then the
        // engine's rst high for 3 rising edges
        read_vector(0);
        rewind(fin);
        b.cycle();
        for (long j = 0; j < beats; j++) {
            dut->i_valid = 1;
            set_beat(j);
            dut->eval();
            while (!dut->i_ready) b.cycle();
            b.cycle();
        }
        dut->i_valid = 0;
        dut->eval();
        const uint32_t r = 3 + (rng % 40);
        for (uint32_t c = 0; c + 1 < r; c++) b.cycle();
        dut->rst_next = 1;
        dut->eval();
        for (int c = 0; c < 3; c++) b.cycle();
        dut->rst_next = 0;
        dut->eval();
        b.cycle();
    }

    for (long k = 0; k < n; k++) {
        long i = 0, got = 0, budget = max_cycles;
        bool presenting = false;
        uint64_t t_last = 0;
        read_vector(k);
        b.cycle();
        while (got < n_out) {
            if (--budget < 0)
                fatal("vector " + std::to_string(k) + ": no result within " +
                      std::to_string(max_cycles) + " cycles");
            if (i < beats) {
                if (!presenting && !draw(stall_in)) {
                    presenting = true;
                    set_beat(i);
                }
                dut->i_valid = presenting;
            } else {
                dut->i_valid = 0;
            }
            dut->o_ready = !draw(stall_out);
            dut->eval();  // settled: what the next rising edge does
            const bool take_in = dut->i_valid && dut->i_ready;
            if (dut->o_valid && dut->o_ready) {
                for (long j = 0; j < TB_LANES; j++)
                    if (got < n_out) ys[got++] = get16(dut->o_payload, j);
                t_last = b.edges - t0;
            }
            b.rise();
            if (take_in) {
                i++;
                presenting = false;
            }
        }
        dut->o_ready = 0;
        dut->eval();
        b.cycle();  // the counters latch with the last transfer
        if (dut->busy) fatal("vector " + std::to_string(k) + ": busy after the last output word");
        fprintf(fout, "%u", static_cast<unsigned>(dut->cycles));
        for (int l = 0; l < TB_LAYERS; l++) fprintf(fout, " %u", get32(dut->layer_cycles, l));
        for (long j = 0; j < n_out; j++) fprintf(fout, " %d", static_cast<int>(static_cast<int16_t>(ys[j])));
        fprintf(fout, " %llu\n", static_cast<unsigned long long>(t_last));
    }
    if (fclose(fout) != 0) fatal("cannot write " + out_path);
    fclose(fin);
    printf("engine_tb: %ld vectors, %llu clock cycles simulated, %f CPU seconds\n", n,
           static_cast<unsigned long long>(b.edges), cpu_seconds());
    dut->final();
    delete dut;
    delete b.ctx;
    return 0;
}
