namespace Weft.Hbone;

/// <summary>
/// Local HTTP/2 settings for one HBONE connection. Windows are what we advertise for receiving;
/// the defaults are ztunnel's (4 MiB per stream, 16 MiB per connection), so a stalled stream can
/// hold at most a quarter of the connection window.
/// </summary>
internal sealed record HboneSettings
{
    public const int DefaultWindowSize = 65_535;

    /// <summary>
    /// Streams we accept (server: advertised in SETTINGS_MAX_CONCURRENT_STREAMS, streams past it are refused
    /// with RST_STREAM(REFUSED_STREAM) before any work is done) or open (client, also capped by the peer's value).
    /// The default matches the client pool's 100 streams per tunnel.
    /// </summary>
    public int MaxConcurrentStreams { get; init; } = DefaultMaxConcurrentStreams;

    public const int DefaultMaxConcurrentStreams = 100;

    /// <summary>Where refusals are counted (and logged, at most once per interval).</summary>
    public HboneCounters Counters { get; init; } = HboneCounters.Process;

    /// <summary>SETTINGS_INITIAL_WINDOW_SIZE we advertise.</summary>
    public int StreamWindow { get; init; } = 4 * 1024 * 1024;

    /// <summary>Connection receive window, raised from 65,535 by a WINDOW_UPDATE right after our SETTINGS.</summary>
    public int ConnectionWindow { get; init; } = 16 * 1024 * 1024;

    /// <summary>SETTINGS_MAX_FRAME_SIZE we advertise and enforce on received frames.</summary>
    public int MaxFrameSize { get; init; } = 16_384;

    /// <summary>SETTINGS_MAX_HEADER_LIST_SIZE; a larger header block closes the connection.</summary>
    public int MaxHeaderListSize { get; init; } = 16_384;

    /// <summary>How often to PING the peer; <see cref="Timeout.InfiniteTimeSpan"/> turns keepalive off.</summary>
    public TimeSpan KeepaliveInterval { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>A PING not acknowledged within this fails the connection.</summary>
    public TimeSpan KeepaliveTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a GOAWAY may take to leave before the transport is closed anyway.</summary>
    public TimeSpan CloseTimeout { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Bytes an application may write ahead of what the peer's windows let us send.</summary>
    public int StreamSendBuffer { get; init; } = 256 * 1024;

    internal void Validate()
    {
        if (MaxConcurrentStreams < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxConcurrentStreams));
        }

        if (StreamWindow < DefaultWindowSize)
        {
            throw new ArgumentOutOfRangeException(nameof(StreamWindow));
        }

        if (ConnectionWindow < DefaultWindowSize)
        {
            throw new ArgumentOutOfRangeException(nameof(ConnectionWindow));
        }

        if (MaxFrameSize < 16_384 || MaxFrameSize > 16_777_215)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxFrameSize));
        }

        if (MaxHeaderListSize < 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxHeaderListSize));
        }

        if (StreamSendBuffer < 16_384)
        {
            throw new ArgumentOutOfRangeException(nameof(StreamSendBuffer));
        }
    }
}
