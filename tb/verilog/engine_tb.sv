// Stand-alone bench of the generated engine: no Python in the loop (tb/fastbench.py builds it
// with `verilator --binary --timing` and reads what it writes; docs/verification.md).
//
// Plusargs: +inputs=FILE (hex int16 words, one a line, N vectors of IN words), +n=N,
// +n_in=I +n_out=O (the words of an input and of an output vector, at most the parameters IN and
// OUT, which are their defaults: a loadable engine's bench serves every network of its shape),
// +out=FILE (per vector one line: cycles, LAYERS layer_cycles, OUT outputs, then the clock cycle
// of its last output word (counted from the end of the first reset), all decimal),
// +stall_in=P +stall_out=P (per mille: chance that the driver holds i_act.valid low / the
// monitor holds o_act.ready low in a cycle), +seed=S, +reset_mid=1 (vector 0 in, a few compute
// cycles, reset, then every vector cleanly), +max_cycles=C (per vector, a hang guard).
// The engine's memories load their contents from +mems=DIR (engine.sv, written by fastbench).
//
// LANES words move a beat on i_act and o_act (the engine's io_lanes; lane j in bits 16j..16j+15,
// an input's last beat padded with zeros).
// Each vector's first word is offered as soon as the previous vector's last output word is
// taken (three cycles later): back to back, so the difference of two vectors' last-word cycles is
// the engine's period per input in a stream.
//
// Timing as the cocotb bench (tb/cocotb_engine.py): 10 ns clock, stimuli set on the falling
// edge and valid/ready sampled 1 ns later (what the next rising edge does: a word moves where
// both are high); valid stays up until its word is taken. Exit: $finish after the last vector; $fatal (non-zero) on a hang or a bad
// file.
`timescale 1ns/1ps
module engine_tb #(parameter int IN = 1, parameter int OUT = 1, parameter int LAYERS = 1,
                   parameter int LANES = 1);
  logic clk = 1'b1;
  logic rst = 1'b1;
  logic i_valid = 1'b0, i_ready;
  logic [16*LANES-1:0] i_payload = '0;
  logic o_valid, o_ready = 1'b0;
  logic [16*LANES-1:0] o_payload;
  longint t0 = 0;  // the clock cycle the first reset ended
  logic [31:0] cycles;
  logic [32*LAYERS-1:0] layer_cycles;
  logic busy;

  engine dut(.clk(clk), .rst(rst),
             .i_act__valid(i_valid), .i_act__ready(i_ready), .i_act__payload(i_payload),
             .o_act__valid(o_valid), .o_act__ready(o_ready), .o_act__payload(o_payload),
             .cycles(cycles), .layer_cycles(layer_cycles), .busy(busy));

  always #5 clk = ~clk;

  import "DPI-C" function real tb_cpu_seconds();  // cpu_time.cpp

  // xorshift32: the stall decisions (deterministic for a seed, the same in every simulator)
  int unsigned rng = 32'h9e3779b9;
  function automatic bit draw(int unsigned permille);
    if (permille == 0) return 1'b0;
    rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
    return (rng % 1000) < permille;
  endfunction

  logic signed [15:0] vec [IN];
  int fin, fout, n, stall_in, stall_out, seed, reset_mid, max_cycles, n_in, n_out;
  string inputs_path, out_path;

  task automatic read_vector(int k);
    int w;
    for (int j = 0; j < n_in; j++) begin
      if ($fscanf(fin, "%h", w) != 1) $fatal(1, "inputs: vector %0d ends at word %0d", k, j);
      vec[j] = w[15:0];
    end
  endtask

  // beat i of the loaded vector (words i * LANES .. , zeros past n_in)
  function automatic logic [16*LANES-1:0] beat(int i);
    logic [16*LANES-1:0] b = '0;
    for (int j = 0; j < LANES; j++)
      if (i * LANES + j < n_in) b[16*j +: 16] = vec[i * LANES + j];
    return b;
  endfunction

  task automatic reset_engine(int n_cycles);
    rst = 1'b1;
    repeat (n_cycles) @(posedge clk);
    @(negedge clk);
    rst = 1'b0;
  endtask

  initial begin
    if (!$value$plusargs("inputs=%s", inputs_path)) $fatal(1, "no +inputs=");
    if (!$value$plusargs("out=%s", out_path)) $fatal(1, "no +out=");
    if (!$value$plusargs("n=%d", n)) $fatal(1, "no +n=");
    if (!$value$plusargs("stall_in=%d", stall_in)) stall_in = 0;
    if (!$value$plusargs("stall_out=%d", stall_out)) stall_out = 0;
    if (!$value$plusargs("seed=%d", seed)) seed = 0;
    if (!$value$plusargs("reset_mid=%d", reset_mid)) reset_mid = 0;
    if (!$value$plusargs("max_cycles=%d", max_cycles)) max_cycles = 2000000;
    if (!$value$plusargs("n_in=%d", n_in)) n_in = IN;
    if (!$value$plusargs("n_out=%d", n_out)) n_out = OUT;
    if (n_in < 1 || n_in > IN || n_out < 1 || n_out > OUT)
      $fatal(1, "+n_in=%0d +n_out=%0d: the bench takes 1..%0d and 1..%0d", n_in, n_out, IN, OUT);
    rng = rng ^ seed;
    if (rng == 0) rng = 1;
    fin = $fopen(inputs_path, "r");
    if (fin == 0) $fatal(1, "cannot open %s", inputs_path);
    fout = $fopen(out_path, "w");
    if (fout == 0) $fatal(1, "cannot open %s", out_path);
    reset_engine(2);
    t0 = $time / 10;

    if (reset_mid != 0 && n > 0) begin
      // an inference cut short by a reset: vector 0 in, a few compute cycles, reset
      read_vector(0);
      $rewind(fin);
      @(negedge clk);
      for (int j = 0; j < (n_in + LANES - 1) / LANES; j++) begin
        i_valid = 1'b1;
        i_payload = beat(j);
        #1;
        while (!i_ready) begin
          @(negedge clk);
          #1;
        end
        @(negedge clk);
      end
      i_valid = 1'b0;
      repeat (3 + (rng % 40)) @(posedge clk);
      reset_engine(3);
    end

    for (int k = 0; k < n; k++) begin
      int i, got, budget, beats;
      longint t_last;
      bit presenting;
      logic signed [15:0] ys [OUT];
      // (declarations in a static block initialise once: assign per vector)
      i = 0; got = 0; budget = max_cycles; presenting = 1'b0; t_last = 0;
      beats = (n_in + LANES - 1) / LANES;
      read_vector(k);
      @(negedge clk);
      while (got < n_out) begin
        bit take_in;
        if (--budget < 0) $fatal(1, "vector %0d: no result within %0d cycles", k, max_cycles);
        if (i < beats) begin
          if (!presenting && !draw(stall_in)) begin
            presenting = 1'b1;
            i_payload = beat(i);
          end
          i_valid = presenting;
        end else i_valid = 1'b0;
        o_ready = !draw(stall_out);
        #1;  // settled: what the next rising edge does
        take_in = i_valid && i_ready;
        if (o_valid && o_ready) begin
          for (int j = 0; j < LANES; j++)
            if (got < n_out) ys[got++] = o_payload[16*j +: 16];
          t_last = $time / 10 - t0;
        end
        @(negedge clk);
        if (take_in) begin
          i++;
          presenting = 1'b0;
        end
      end
      o_ready = 1'b0;
      @(negedge clk);  // the counters latch with the last transfer
      if (busy) $fatal(1, "vector %0d: busy after the last output word", k);
      $fwrite(fout, "%0d", cycles);
      for (int l = 0; l < LAYERS; l++) $fwrite(fout, " %0d", layer_cycles[32*l +: 32]);
      for (int j = 0; j < n_out; j++) $fwrite(fout, " %0d", ys[j]);
      $fwrite(fout, " %0d\n", t_last);
    end
    $fclose(fout);
    $fclose(fin);
    $display("engine_tb: %0d vectors, %0d clock cycles simulated, %f CPU seconds", n,
             $time / 10, tb_cpu_seconds());
    $finish;
  end
endmodule
