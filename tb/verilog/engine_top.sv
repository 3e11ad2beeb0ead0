// The engine as the Verilator testbench (engine_tb.cpp, tb/fastbench.py) drives it: its reset
// from a flip-flop. Amaranth's Verilog folds `rst` into nearly every next-state expression, so
// with `rst` a top-level input Verilator re-evaluates all that logic on every eval() that may
// have changed an input (twice a clock cycle); from a flip-flop it is evaluated once, after the
// rising edge. The bench drives `rst_next` one cycle ahead, so the engine's `rst` is what the
// cocotb bench gives it, cycle for cycle (docs/verification.md).
module engine_top #(parameter int LANES = 1, parameter int LAYERS = 1) (
    input clk, input rst_next,
    input i_valid, output i_ready, input [16*LANES-1:0] i_payload,
    output o_valid, input o_ready, output [16*LANES-1:0] o_payload,
    output [31:0] cycles, output [32*LAYERS-1:0] layer_cycles, output busy);
  logic rst = 1'b1;
  always @(posedge clk) rst <= rst_next;
  engine dut(.clk(clk), .rst(rst),
             .i_act__valid(i_valid), .i_act__ready(i_ready), .i_act__payload(i_payload),
             .o_act__valid(o_valid), .o_act__ready(o_ready), .o_act__payload(o_payload),
             .cycles(cycles), .layer_cycles(layer_cycles), .busy(busy));
endmodule
