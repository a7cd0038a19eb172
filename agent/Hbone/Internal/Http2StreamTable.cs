namespace Weft.Hbone.Internal;

/// <summary>
/// The open streams of one connection and the stream ids used so far (RFC 9113 section 5.1.1). Not
/// thread-safe: the connection's lock guards it, together with the limits it checks against.
/// </summary>
internal sealed class Http2StreamTable(bool isClient)
{
    private readonly Dictionary<int, HboneStream> _streams = [];
    private int _nextStreamId = 1;

    public int Count => _streams.Count;

    public Dictionary<int, HboneStream>.ValueCollection Streams => _streams.Values;

    /// <summary>The highest id the peer opened a stream with (server); GOAWAY reports it.</summary>
    public int LastPeerStreamId { get; private set; }

    /// <summary>False once every client stream id has been used; the connection then opens no more.</summary>
    public bool HasFreeStreamId => _nextStreamId > 0;

    public HboneStream? Find(int streamId) => _streams.GetValueOrDefault(streamId);

    /// <summary>Client: the next odd id, in order; ids must go out on the wire in the order they are taken.</summary>
    public int TakeStreamId()
    {
        int id = _nextStreamId;
        _nextStreamId = id + 2; // turns negative after 2^31-1: no more streams
        return id;
    }

    /// <summary>Server: the peer used <paramref name="streamId"/>; lower ids can no longer be opened.</summary>
    public void AcceptPeerStreamId(int streamId) => LastPeerStreamId = streamId;

    public void Add(HboneStream stream) => _streams.Add(stream.StreamId, stream);

    public void Remove(HboneStream stream) => _streams.Remove(stream.StreamId);

    /// <summary>Empties the table (the connection ended) and returns what was open.</summary>
    public List<HboneStream> RemoveAll()
    {
        List<HboneStream> streams = [.. _streams.Values];
        _streams.Clear();
        return streams;
    }

    /// <summary>Whether a stream was opened by us (odd ids for a client).</summary>
    public bool IsOurs(int streamId) => (streamId & 1) == (isClient ? 1 : 0);

    /// <summary>A stream id the peer could not have used yet (never opened by either side).</summary>
    public bool IsIdle(int streamId)
    {
        bool peerInitiated = (streamId & 1) == (isClient ? 0 : 1);
        if (peerInitiated)
        {
            // Clients here never accept pushed (even) streams, so those are never opened.
            return isClient || streamId > LastPeerStreamId;
        }
        if (!isClient)
        {
            return true; // the server opens no streams
        }
        return _nextStreamId > 0 && streamId >= _nextStreamId;
    }
}
