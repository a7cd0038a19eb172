namespace Weft.Gateway;

/// <summary>
/// An HTTPRoute rule's timeouts on one forwarded request: a token the forwarder gets, cancelled when the first of
/// the two runs out. Both start when the gateway starts forwarding (the request's route and endpoint are chosen,
/// nothing is sent yet): <c>request</c> bounds the whole answer to the client, <c>backendRequest</c> the one
/// request to the backend, from sending it to its whole response. The gateway does not retry, so they bound the
/// same exchange and the shorter one fires. Made only for a route with timeouts: other requests carry no timer.
/// </summary>
internal sealed class ForwardDeadline : IDisposable
{
    // CancelAfter takes at most uint.MaxValue - 1 ms (about 49 days); a longer timeout is never reached by a request.
    private static readonly TimeSpan Longest = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private readonly CancellationTokenSource _source = new();
    private readonly CancellationToken _client;
    private readonly ITimer? _expiry;
    private volatile bool _timedOut;

    /// <param name="client">The client's request (HttpContext.RequestAborted): a client gone before the timeout ran out is no timeout.</param>
    public ForwardDeadline(RouteTimeouts timeouts, CancellationToken client)
    {
        _client = client;
        (Which, After) = (timeouts.Request, timeouts.BackendRequest) switch
        {
            ({ } request, { } backend) when backend < request => ("backendRequest", backend),
            ({ } request, _) => ("request", request),
            (_, { } backend) => ("backendRequest", backend),
            _ => ("request", Timeout.InfiniteTimeSpan),
        };
        if (After > TimeSpan.Zero && After <= Longest)
        {
            _expiry = TimeProvider.System.CreateTimer(static state => ((ForwardDeadline)state!).Expire(), this, After, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>Which timeout is running: <c>request</c> or <c>backendRequest</c>.</summary>
    public string Which { get; }

    /// <summary>How long it gives the request.</summary>
    public TimeSpan After { get; }

    public CancellationToken Token => _source.Token;

    /// <summary>
    /// True once the timeout ran out while the client was still there (and the forward was told to stop). Read after the
    /// forward, it tells a timeout from a client that left: when the forward cuts a response already under way, the
    /// client's connection is aborted too, after the fact.
    /// </summary>
    public bool TimedOut => _timedOut;

    /// <summary>
    /// Decides whether this is a timeout before the token is cancelled. A callback registered on the token would run after
    /// the forwarder's own (a token runs the last registered first), and the forwarder may give up and the request be
    /// answered before it had run: a timeout then read as a broken backend (502 instead of 504).
    /// </summary>
    private void Expire()
    {
        _timedOut = !_client.IsCancellationRequested;
        try
        {
            _source.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The forward ended as the timer ran out.
        }
    }

    /// <summary>
    /// The backend accepted an upgrade (a WebSocket): from here the connection is two byte streams, bounded by the stream
    /// idle timeout, not by the rule's timeouts, which bounded the handshake (as YARP does with ASP.NET Core's request timeout).
    /// </summary>
    public void Disarm() => _expiry?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

    public void Dispose()
    {
        _expiry?.Dispose();
        _source.Dispose();
    }
}
