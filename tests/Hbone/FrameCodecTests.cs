using System.Buffers;
using Weft.Hbone;
using Weft.Hbone.Internal;

namespace Weft.Tests.Hbone;

public class FrameCodecTests
{
    [Fact]
    public void FrameHeader_RoundTripsAndIgnoresTheReservedBit()
    {
        var header = new FrameHeader(16_777_215, FrameType.Headers, FrameFlags.EndHeaders | FrameFlags.EndStream, 0x7FFF_FFFF);
        byte[] bytes = new byte[FrameHeader.Size];
        header.Write(bytes);
        Assert.Equal("ffffff01057fffffff", Convert.ToHexString(bytes).ToLowerInvariant());
        bytes[5] |= 0x80;
        Assert.Equal(header, FrameHeader.Read(bytes));
    }

    [Fact]
    public void HeaderBlock_LargerThanAFrame_IsSplitIntoContinuations()
    {
        var output = new ArrayBufferWriter<byte>();
        byte[] block = Enumerable.Range(0, 40_000).Select(i => (byte)i).ToArray();
        FrameWriter.WriteHeaderBlock(output, 5, block, endStream: true, maxFrameSize: 16_384);

        var sequence = new ReadOnlySequence<byte>(output.WrittenMemory);
        var frames = new List<(FrameHeader Header, byte[] Payload)>();
        while (FrameHeader.TryRead(sequence, out FrameHeader header))
        {
            frames.Add((header, sequence.Slice(FrameHeader.Size, header.Length).ToArray()));
            sequence = sequence.Slice(FrameHeader.Size + header.Length);
        }
        Assert.Equal([FrameType.Headers, FrameType.Continuation, FrameType.Continuation], frames.Select(f => f.Header.Type));
        Assert.Equal(FrameFlags.EndStream, frames[0].Header.Flags);          // END_STREAM only on HEADERS
        Assert.Equal(FrameFlags.EndHeaders, frames[2].Header.Flags);         // END_HEADERS only on the last
        Assert.Equal(0, frames[1].Header.Flags);
        Assert.All(frames, f => Assert.Equal(5, f.Header.StreamId));
        Assert.Equal(block, frames.SelectMany(f => f.Payload).ToArray());
    }

    [Fact]
    public void ControlFrames_HaveTheRfcLayouts()
    {
        var output = new ArrayBufferWriter<byte>();
        FrameWriter.WriteSettings(output, [(SettingId.InitialWindowSize, 4 * 1024 * 1024)]);
        FrameWriter.WriteWindowUpdate(output, 3, 1000);
        FrameWriter.WriteRstStream(output, 3, Http2ErrorCode.Cancel);
        FrameWriter.WriteGoAway(output, 7, Http2ErrorCode.EnhanceYourCalm);
        FrameWriter.WritePing(output, 0x0102030405060708, ack: true);
        Assert.Equal(
            "000006040000000000" + "000400400000" +
            "000004080000000003" + "000003e8" +
            "000004030000000003" + "00000008" +
            "000008070000000000" + "000000070000000b" +
            "000008060100000000" + "0102030405060708",
            Convert.ToHexString(output.WrittenSpan).ToLowerInvariant());
    }
}
