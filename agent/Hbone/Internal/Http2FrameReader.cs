using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Weft.Hbone.Internal.Hpack;

namespace Weft.Hbone.Internal;

/// <summary>
/// The read side of a connection: the client preface (server only), frames cut from the transport's
/// PipeReader, the checks a frame needs on its own (RFC 9113 section 6), header blocks gathered across
/// CONTINUATIONs and decoded with HPACK. Each frame goes to an <see cref="IHttp2FrameHandler"/>.
/// Used by the connection's read loop only, so it holds no lock.
/// </summary>
internal sealed class Http2FrameReader
{
    private readonly PipeReader _input;
    private readonly HboneSettings _settings;
    private readonly bool _isClient;
    private readonly IHttp2FrameHandler _handler;
    private readonly HpackDecoder _decoder;
    private readonly List<KeyValuePair<string, string>> _decoded = [];

    private bool _peerSettingsReceived;
    private byte[]? _headerBlock;
    private int _headerBlockLength;
    private int _headerStreamId;
    private bool _headerEndStream;

    public Http2FrameReader(PipeReader input, HboneSettings settings, bool isClient, IHttp2FrameHandler handler)
    {
        _input = input;
        _settings = settings;
        _isClient = isClient;
        _handler = handler;
        _decoder = new HpackDecoder(4096, settings.MaxHeaderListSize);
    }

    /// <summary>Reads until the peer closes the transport cleanly; throws <see cref="Http2ConnectionException"/> on a connection error.</summary>
    public async Task ReadAsync(CancellationToken ct)
    {
        try
        {
            if (!_isClient)
            {
                await ReadPrefaceAsync(ct).ConfigureAwait(false);
            }
            while (true)
            {
                ReadResult result = await _input.ReadAsync(ct).ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                try
                {
                    ProcessFrames(ref buffer);
                }
                finally
                {
                    _input.AdvanceTo(buffer.Start, buffer.End);
                }
                _handler.HandOverData(endOfRead: true);
                if (result.IsCompleted)
                {
                    if (!buffer.IsEmpty)
                    {
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "transport closed inside a frame");
                    }
                    break;
                }
            }
        }
        finally
        {
            ReleaseHeaderBlock();
            await _input.CompleteAsync().ConfigureAwait(false);
        }
    }

    private async Task ReadPrefaceAsync(CancellationToken ct)
    {
        ReadOnlySpan<byte> expected = FrameHeader.ClientPreface;
        int length = expected.Length;
        while (true)
        {
            ReadResult result = await _input.ReadAsync(ct).ConfigureAwait(false);
            ReadOnlySequence<byte> buffer = result.Buffer;
            int available = (int)Math.Min(buffer.Length, length);
            byte[] seen = new byte[available];
            buffer.Slice(0, available).CopyTo(seen);
            // Refuse garbage as soon as it diverges, not after a full preface's worth of it.
            if (!FrameHeader.ClientPreface[..available].SequenceEqual(seen))
            {
                _input.AdvanceTo(buffer.Start);
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "invalid connection preface");
            }
            if (available == length)
            {
                _input.AdvanceTo(buffer.GetPosition(length));
                return;
            }
            _input.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "transport closed inside the preface");
            }
        }
    }

    private void ProcessFrames(ref ReadOnlySequence<byte> buffer)
    {
        while (FrameHeader.TryRead(buffer, out FrameHeader header))
        {
            if (header.Length > _settings.MaxFrameSize)
            {
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes exceeds {_settings.MaxFrameSize}");
            }
            if (buffer.Length < FrameHeader.Size + header.Length)
            {
                return;
            }
            ReadOnlySequence<byte> payload = buffer.Slice(FrameHeader.Size, header.Length);
            try
            {
                ProcessFrame(header, payload, moreFollows: buffer.Length > FrameHeader.Size + header.Length);
            }
            catch (Http2StreamException e)
            {
                _handler.OnStreamError(e);
            }
            buffer = buffer.Slice(FrameHeader.Size + header.Length);
        }
    }

    private void ProcessFrame(FrameHeader header, ReadOnlySequence<byte> payload, bool moreFollows)
    {
        if (header.Type != FrameType.Data)
        {
            _handler.HandOverData(endOfRead: false);
        }

        if (_headerBlock is not null && (header.Type != FrameType.Continuation || header.StreamId != _headerStreamId))
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} frame inside a header block");
        }
        if (!_peerSettingsReceived && (header.Type != FrameType.Settings || header.HasFlag(FrameFlags.Ack)))
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "first frame is not SETTINGS");
        }
        switch (header.Type)
        {
            case FrameType.Data: OnData(header, payload, moreFollows); break;
            case FrameType.Headers: OnHeaders(header, payload); break;
            case FrameType.Continuation: OnContinuation(header, payload); break;
            case FrameType.Priority: OnPriority(header); break;
            case FrameType.RstStream: OnRstStream(header, payload); break;
            case FrameType.Settings: OnSettings(header, payload); break;
            case FrameType.PushPromise:
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PUSH_PROMISE is not enabled");
            case FrameType.Ping: OnPing(header, payload); break;
            case FrameType.GoAway: OnGoAway(header, payload); break;
            case FrameType.WindowUpdate: OnWindowUpdate(header, payload); break;
            default:
                // Unknown frame types are ignored (RFC 9113 section 4.1).
                break;
        }
    }

    private static byte FirstByte(in ReadOnlySequence<byte> payload) => payload.FirstSpan.Length > 0 ? payload.FirstSpan[0] : payload.Slice(0, 1).ToArray()[0];

    private static uint ReadUInt32(in ReadOnlySequence<byte> payload, int offset)
    {
        Span<byte> bytes = stackalloc byte[4];
        payload.Slice(offset, 4).CopyTo(bytes);
        return BinaryPrimitives.ReadUInt32BigEndian(bytes);
    }

    private void OnData(FrameHeader header, ReadOnlySequence<byte> payload, bool moreFollows)
    {
        if (header.StreamId == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA on stream 0");
        }
        if (header.HasFlag(FrameFlags.Padded))
        {
            if (header.Length < 1)
            {
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "padded DATA without pad length");
            }
            int padding = FirstByte(payload);
            if (padding >= header.Length)
            {
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA padding exceeds payload");
            }
            payload = payload.Slice(1, header.Length - 1 - padding);
        }
        _handler.OnData(header.StreamId, header.Length, payload, header.HasFlag(FrameFlags.EndStream), moreFollows);
    }

    private void OnHeaders(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.StreamId == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "HEADERS on stream 0");
        }
        int offset = 0;
        int padding = 0;
        if (header.HasFlag(FrameFlags.Padded))
        {
            if (header.Length < 1)
            {
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "padded HEADERS without pad length");
            }
            padding = FirstByte(payload);
            offset = 1;
        }
        if (header.HasFlag(FrameFlags.Priority))
        {
            offset += 5;
        }
        if (offset + padding > header.Length)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "HEADERS padding or priority exceeds payload");
        }
        _headerStreamId = header.StreamId;
        _headerEndStream = header.HasFlag(FrameFlags.EndStream);
        _headerBlockLength = 0;
        _headerBlock = ArrayPool<byte>.Shared.Rent(Math.Min(HeaderBlockLimit, 4096));
        AppendHeaderFragment(payload.Slice(offset, header.Length - offset - padding));
        if (header.HasFlag(FrameFlags.EndHeaders))
        {
            CompleteHeaderBlock();
        }
    }

    private void OnContinuation(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (_headerBlock is null)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "CONTINUATION without HEADERS");
        }
        AppendHeaderFragment(payload);
        if (header.HasFlag(FrameFlags.EndHeaders))
        {
            CompleteHeaderBlock();
        }
    }

    // Compressed blocks may exceed the decoded size only through Huffman expansion of odd bytes (up to
    // 30 bits per octet); anything past this is refused before it is buffered.
    private int HeaderBlockLimit => _settings.MaxHeaderListSize * 4 + 1024;

    private void AppendHeaderFragment(ReadOnlySequence<byte> fragment)
    {
        int needed = _headerBlockLength + (int)fragment.Length;
        if (needed > HeaderBlockLimit)
        {
            ReleaseHeaderBlock();
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm, $"header block larger than {HeaderBlockLimit} bytes");
        }
        if (needed > _headerBlock!.Length)
        {
            byte[] bigger = ArrayPool<byte>.Shared.Rent(Math.Min(Math.Max(needed, _headerBlock.Length * 2), HeaderBlockLimit));
            _headerBlock.AsSpan(0, _headerBlockLength).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_headerBlock);
            _headerBlock = bigger;
        }
        fragment.CopyTo(_headerBlock.AsSpan(_headerBlockLength));
        _headerBlockLength = needed;
    }

    private void ReleaseHeaderBlock()
    {
        if (_headerBlock is not null)
        {
            ArrayPool<byte>.Shared.Return(_headerBlock);
            _headerBlock = null;
        }
    }

    private void CompleteHeaderBlock()
    {
        _decoded.Clear();
        try
        {
            // Always decode: HPACK state must stay in step even for streams we then refuse.
            _decoder.Decode(_headerBlock.AsSpan(0, _headerBlockLength), _decoded);
        }
        catch (HpackException e)
        {
            throw new Http2ConnectionException(Http2ErrorCode.CompressionError, e.Message);
        }
        catch (HeaderListTooLargeException e)
        {
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm, e.Message);
        }
        finally
        {
            ReleaseHeaderBlock();
        }
        _handler.OnHeaders(_headerStreamId, _headerEndStream, _decoded);
    }

    private static void OnPriority(FrameHeader header)
    {
        if (header.StreamId == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PRIORITY on stream 0");
        }
        if (header.Length != 5)
        {
            throw new Http2StreamException(header.StreamId, Http2ErrorCode.FrameSizeError, "PRIORITY length is not 5");
        }
    }

    private void OnRstStream(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.StreamId == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "RST_STREAM on stream 0");
        }
        if (header.Length != 4)
        {
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "RST_STREAM length is not 4");
        }
        _handler.OnRstStream(header.StreamId, (Http2ErrorCode)ReadUInt32(payload, 0));
    }

    private void OnSettings(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.StreamId != 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "SETTINGS on a stream");
        }
        if (header.HasFlag(FrameFlags.Ack))
        {
            if (header.Length != 0)
            {
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS ACK with a payload");
            }
            return;
        }
        if (header.Length % 6 != 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS length is not a multiple of 6");
        }
        _peerSettingsReceived = true;
        Span<byte> entry = stackalloc byte[6];
        for (int offset = 0; offset < header.Length; offset += 6)
        {
            payload.Slice(offset, 6).CopyTo(entry);
            var id = (SettingId)BinaryPrimitives.ReadUInt16BigEndian(entry);
            uint value = BinaryPrimitives.ReadUInt32BigEndian(entry[2..]);
            switch (id)
            {
                case SettingId.EnablePush:
                    if (value > 1 || (_isClient && value == 1))
                    {
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_ENABLE_PUSH {value}");
                    }
                    break;
                case SettingId.InitialWindowSize:
                    if (value > FrameHeader.MaxWindow)
                    {
                        throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"SETTINGS_INITIAL_WINDOW_SIZE {value}");
                    }
                    break;
                case SettingId.MaxFrameSize:
                    if (value < FrameHeader.MinMaxFrameSize || value > FrameHeader.MaxMaxFrameSize)
                    {
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_MAX_FRAME_SIZE {value}");
                    }
                    break;
            }
            _handler.OnSetting(id, value);
        }
        _handler.OnSettingsApplied();
    }

    private void OnPing(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.StreamId != 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PING on a stream");
        }
        if (header.Length != 8)
        {
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "PING length is not 8");
        }
        Span<byte> bytes = stackalloc byte[8];
        payload.CopyTo(bytes);
        _handler.OnPing(BinaryPrimitives.ReadUInt64BigEndian(bytes), header.HasFlag(FrameFlags.Ack));
    }

    private void OnGoAway(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.StreamId != 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "GOAWAY on a stream");
        }
        if (header.Length < 8)
        {
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "GOAWAY shorter than 8");
        }
        _handler.OnGoAway((int)(ReadUInt32(payload, 0) & 0x7FFF_FFFF), (Http2ErrorCode)ReadUInt32(payload, 4));
    }

    private void OnWindowUpdate(FrameHeader header, ReadOnlySequence<byte> payload)
    {
        if (header.Length != 4)
        {
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "WINDOW_UPDATE length is not 4");
        }
        _handler.OnWindowUpdate(header.StreamId, (int)(ReadUInt32(payload, 0) & 0x7FFF_FFFF));
    }
}
