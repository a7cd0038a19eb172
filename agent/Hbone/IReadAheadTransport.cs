namespace Weft.Hbone;

/// <summary>
/// A connection's transport that reads ahead of its reader (the tunnel's socket, under its TLS stream): it says when
/// bytes already read are waiting for the next read, and calls back before a read has to wait for the peer. The HTTP/2
/// reader joins a stream's consecutive DATA frames while more is waiting, and hands them over before any wait.
/// </summary>
internal interface IReadAheadTransport
{
    /// <summary>Bytes already received are waiting for the next read: it will not wait for the peer.</summary>
    bool HasReadAhead { get; }

    /// <summary>Called on the reader's thread before a read waits for the peer or leaves a busy turn (set once).</summary>
    Action? BeforeWait { set; }
}
