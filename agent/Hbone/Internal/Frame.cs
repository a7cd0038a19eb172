using System.Buffers;
using System.Buffers.Binary;

namespace Weft.Hbone.Internal;

internal enum FrameType : byte
{
    Data = 0x0,
    Headers = 0x1,
    Priority = 0x2,
    RstStream = 0x3,
    Settings = 0x4,
    PushPromise = 0x5,
    Ping = 0x6,
    GoAway = 0x7,
    WindowUpdate = 0x8,
    Continuation = 0x9,
}

internal static class FrameFlags
{
    public const byte EndStream = 0x1;
    public const byte Ack = 0x1;
    public const byte EndHeaders = 0x4;
    public const byte Padded = 0x8;
    public const byte Priority = 0x20;
}

internal enum SettingId : ushort
{
    HeaderTableSize = 0x1,
    EnablePush = 0x2,
    MaxConcurrentStreams = 0x3,
    InitialWindowSize = 0x4,
    MaxFrameSize = 0x5,
    MaxHeaderListSize = 0x6,
}

/// <summary>The 9-octet frame header (RFC 9113 section 4.1).</summary>
internal readonly record struct FrameHeader(int Length, FrameType Type, byte Flags, int StreamId)
{
    public const int Size = 9;
    public const int MinMaxFrameSize = 16_384;
    public const int MaxMaxFrameSize = 16_777_215;
    public const int MaxWindow = int.MaxValue;

    /// <summary>
    /// The most DATA payload we put in one frame: with its header it fills one TLS record (16 KiB of plaintext) exactly,
    /// so a tunnel's 64 KiB of DATA is four records, not four and a fifth of 36 bytes (a send, a record and a read more).
    /// </summary>
    public const int RecordSizedData = 16_384 - Size;

    public static ReadOnlySpan<byte> ClientPreface => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;

    public bool HasFlag(byte flag) => (Flags & flag) != 0;

    public static FrameHeader Read(ReadOnlySpan<byte> source) => new(
        (source[0] << 16) | (source[1] << 8) | source[2],
        (FrameType)source[3],
        source[4],
        // The reserved bit is ignored on receipt.
        (int)(BinaryPrimitives.ReadUInt32BigEndian(source[5..]) & 0x7FFF_FFFF));

    public void Write(Span<byte> destination)
    {
        destination[0] = (byte)(Length >> 16);
        destination[1] = (byte)(Length >> 8);
        destination[2] = (byte)Length;
        destination[3] = (byte)Type;
        destination[4] = Flags;
        BinaryPrimitives.WriteUInt32BigEndian(destination[5..], (uint)StreamId);
    }

    public static bool TryRead(in ReadOnlySequence<byte> buffer, out FrameHeader header)
    {
        if (buffer.Length < Size)
        {
            header = default;
            return false;
        }
        Span<byte> bytes = stackalloc byte[Size];
        buffer.Slice(0, Size).CopyTo(bytes);
        header = Read(bytes);
        return true;
    }
}

/// <summary>Writes whole frames into a buffer writer (the transport's PipeWriter, under the write lock).</summary>
internal static class FrameWriter
{
    public static void WriteHeader(IBufferWriter<byte> output, int length, FrameType type, byte flags, int streamId)
    {
        new FrameHeader(length, type, flags, streamId).Write(output.GetSpan(FrameHeader.Size));
        output.Advance(FrameHeader.Size);
    }

    public static void WriteSettings(IBufferWriter<byte> output, ReadOnlySpan<(SettingId Id, uint Value)> settings)
    {
        WriteHeader(output, settings.Length * 6, FrameType.Settings, 0, 0);
        foreach (var (id, value) in settings)
        {
            Span<byte> span = output.GetSpan(6);
            BinaryPrimitives.WriteUInt16BigEndian(span, (ushort)id);
            BinaryPrimitives.WriteUInt32BigEndian(span[2..], value);
            output.Advance(6);
        }
    }

    public static void WriteSettingsAck(IBufferWriter<byte> output) =>
        WriteHeader(output, 0, FrameType.Settings, FrameFlags.Ack, 0);

    public static void WritePing(IBufferWriter<byte> output, ulong opaque, bool ack)
    {
        WriteHeader(output, 8, FrameType.Ping, ack ? FrameFlags.Ack : (byte)0, 0);
        BinaryPrimitives.WriteUInt64BigEndian(output.GetSpan(8), opaque);
        output.Advance(8);
    }

    public static void WriteWindowUpdate(IBufferWriter<byte> output, int streamId, int increment)
    {
        WriteHeader(output, 4, FrameType.WindowUpdate, 0, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(output.GetSpan(4), (uint)increment);
        output.Advance(4);
    }

    public static void WriteRstStream(IBufferWriter<byte> output, int streamId, Http2ErrorCode code)
    {
        WriteHeader(output, 4, FrameType.RstStream, 0, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(output.GetSpan(4), (uint)code);
        output.Advance(4);
    }

    public static void WriteGoAway(IBufferWriter<byte> output, int lastStreamId, Http2ErrorCode code)
    {
        WriteHeader(output, 8, FrameType.GoAway, 0, 0);
        Span<byte> span = output.GetSpan(8);
        BinaryPrimitives.WriteUInt32BigEndian(span, (uint)lastStreamId);
        BinaryPrimitives.WriteUInt32BigEndian(span[4..], (uint)code);
        output.Advance(8);
    }

    /// <summary>A header block as HEADERS plus CONTINUATION frames, none over <paramref name="maxFrameSize"/>.</summary>
    public static void WriteHeaderBlock(IBufferWriter<byte> output, int streamId, ReadOnlySpan<byte> block, bool endStream, int maxFrameSize)
    {
        bool first = true;
        do
        {
            int chunk = Math.Min(block.Length, maxFrameSize);
            bool last = chunk == block.Length;
            byte flags = (byte)((last ? FrameFlags.EndHeaders : 0) | (first && endStream ? FrameFlags.EndStream : 0));
            WriteHeader(output, chunk, first ? FrameType.Headers : FrameType.Continuation, flags, streamId);
            output.Write(block[..chunk]);
            block = block[chunk..];
            first = false;
        }
        while (!block.IsEmpty);
    }

    public static void WriteData(IBufferWriter<byte> output, int streamId, in ReadOnlySequence<byte> data, bool endStream)
    {
        WriteHeader(output, (int)data.Length, FrameType.Data, endStream ? FrameFlags.EndStream : (byte)0, streamId);
        foreach (ReadOnlyMemory<byte> segment in data)
        {
            output.Write(segment.Span);
        }
    }
}

/// <summary>A connection error (RFC 9113 section 5.4.1): GOAWAY with the code, then close.</summary>
internal sealed class Http2ConnectionException(Http2ErrorCode code, string message) : Exception(message)
{
    public Http2ErrorCode Code { get; } = code;
}

/// <summary>A stream error (section 5.4.2): RST_STREAM with the code; the connection goes on.</summary>
internal sealed class Http2StreamException(int streamId, Http2ErrorCode code, string message) : Exception(message)
{
    public int StreamId { get; } = streamId;
    public Http2ErrorCode Code { get; } = code;
}
