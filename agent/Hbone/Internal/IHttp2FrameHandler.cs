namespace Weft.Hbone.Internal;

/// <summary>
/// What a connection does with frames <see cref="Http2FrameReader"/> has parsed and checked on their own
/// (lengths, stream 0, padding, header blocks decoded). What depends on the connection's state (idle or
/// closed streams, windows) is checked here; a method throws <see cref="Http2ConnectionException"/> or
/// <see cref="Http2StreamException"/> for the reader's loop to turn into GOAWAY or RST_STREAM.
/// </summary>
internal interface IHttp2FrameHandler
{
    /// <summary>
    /// DATA: <paramref name="frameLength"/> counts against the windows, padding included; <paramref name="data"/> is without
    /// padding, and valid only during the call. <paramref name="moreFollows"/>: the bytes of further frames were read with it.
    /// </summary>
    void OnData(int streamId, int frameLength, in System.Buffers.ReadOnlySequence<byte> data, bool endStream, bool moreFollows);

    /// <summary>
    /// DATA held back to be joined with the next frames goes to its stream: before any frame other than DATA, and when a
    /// read's frames are done (<paramref name="endOfRead"/>), unless the transport has more read ahead.
    /// </summary>
    void HandOverData(bool endOfRead);

    /// <summary>A complete header block (HEADERS plus CONTINUATIONs), decoded; the list is reused for the next block.</summary>
    void OnHeaders(int streamId, bool endStream, List<KeyValuePair<string, string>> fields);

    void OnRstStream(int streamId, Http2ErrorCode code);

    /// <summary>One entry of the peer's SETTINGS, in order, after its value was checked.</summary>
    void OnSetting(SettingId id, uint value);

    /// <summary>The peer's SETTINGS frame is applied: it wants an ACK.</summary>
    void OnSettingsApplied();

    void OnPing(ulong opaque, bool ack);

    void OnGoAway(int lastStreamId, Http2ErrorCode code);

    void OnWindowUpdate(int streamId, int increment);

    /// <summary>A stream error found while reading: reset that stream, the connection goes on.</summary>
    void OnStreamError(Http2StreamException error);
}
