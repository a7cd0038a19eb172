namespace Weft.Hbone;

/// <summary>
/// A tunnel failure the caller can act on: a CONNECT answered with a non-2xx status
/// (<see cref="StatusCode"/>), a stream or connection ended with an HTTP/2 error code
/// (<see cref="ErrorCode"/>), or the connection being gone.
/// </summary>
internal sealed class HboneException : Exception
{
    public HboneException(string message, int? statusCode = null, Http2ErrorCode? errorCode = null, Exception? inner = null)
        : base(message, inner)
    {
        StatusCode = statusCode;
        ErrorCode = errorCode;
    }

    /// <summary>The :status of a refused CONNECT, when that is what happened.</summary>
    public int? StatusCode { get; }

    /// <summary>The RST_STREAM or GOAWAY code, when that is what happened.</summary>
    public Http2ErrorCode? ErrorCode { get; }

    /// <summary>
    /// True when the peer never processed the request (REFUSED_STREAM, or a GOAWAY whose last stream
    /// id is below ours), so opening it again on another connection is safe.
    /// </summary>
    public bool IsRetryable { get; init; }
}
