using System.Net;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>Why the proxy did not carry a connection through (or cut it short).</summary>
internal enum ProxyErrorKind
{
    /// <summary>Policy said no: an AuthorizationPolicy, STRICT mTLS, or the peer refused the tunnel with 403.</summary>
    Denied,

    /// <summary>A service with no ready endpoint.</summary>
    NoHealthyUpstream,

    /// <summary>The destination (or its node's tunnel port) could not be connected to.</summary>
    UpstreamConnectFailure,

    /// <summary>A limit of the agent was full (per pod, per peer identity, per node).</summary>
    Overflow,

    /// <summary>The TLS handshake or the peer's identity failed.</summary>
    TlsFailure,

    /// <summary>An HTTP/2 CONNECT failed or named something other than this pod.</summary>
    ConnectFailure,

    /// <summary>The destination is the agent itself.</summary>
    Loop,

    /// <summary>No byte crossed the connection for the idle timeout.</summary>
    IdleTimeout,

    /// <summary>The tunnel carrying an outbound connection was lost under it (keepalive timeout, reset, peer gone).</summary>
    UpstreamTermination,

    /// <summary>The tunnel an inbound connection arrived in was lost under it.</summary>
    DownstreamTermination,

    /// <summary>The pod has no certificate yet: the CA service did not issue one in time. Never sent in plaintext instead.</summary>
    NoCertificate,
}

/// <summary>
/// The response flags users see in flows and in the metrics' <c>response_flags</c> label: the only
/// place their spelling lives. Constants, so each flow carries the same string instance (the metrics
/// cache compares flags by reference).
/// </summary>
internal static class ResponseFlag
{
    /// <summary>Forwarded with nothing to report.</summary>
    public const string None = "-";

    public const string Deny = "DENY";
    public const string NoHealthyUpstream = "UH";
    public const string UpstreamConnectFailure = "UF";
    public const string Overflow = "UO";
    public const string TlsFailure = "TLS_FAILURE";
    public const string ConnectFailure = "CONNECT";
    public const string Loop = "LOOP";
    public const string IdleTimeout = "IDLE_TIMEOUT";
    public const string UpstreamTermination = "UC";
    public const string DownstreamTermination = "DC";
    public const string NoCertificate = "NO_CERTIFICATE";

    public static string Of(ProxyErrorKind kind) => kind switch
    {
        ProxyErrorKind.Denied => Deny,
        ProxyErrorKind.NoHealthyUpstream => NoHealthyUpstream,
        ProxyErrorKind.UpstreamConnectFailure => UpstreamConnectFailure,
        ProxyErrorKind.Overflow => Overflow,
        ProxyErrorKind.TlsFailure => TlsFailure,
        ProxyErrorKind.ConnectFailure => ConnectFailure,
        ProxyErrorKind.Loop => Loop,
        ProxyErrorKind.IdleTimeout => IdleTimeout,
        ProxyErrorKind.UpstreamTermination => UpstreamTermination,
        ProxyErrorKind.DownstreamTermination => DownstreamTermination,
        ProxyErrorKind.NoCertificate => NoCertificate,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };
}

/// <summary>A refusal or failure of one connection: what kind (its response flag) and why, in words for the flow record.</summary>
internal sealed record ProxyError(ProxyErrorKind Kind, string Reason)
{
    public string Flag => ResponseFlag.Of(Kind);

    /// <summary>
    /// What a failure to open a tunnel stream to <paramref name="destination"/> means; null for an
    /// exception that is not a tunnel failure (the caller lets it propagate).
    /// </summary>
    public static ProxyError? OfTunnelFailure(Exception e, IPEndPoint destination) => e switch
    {
        TunnelPoolFullException => new(ProxyErrorKind.Overflow, $"tunnel to {destination}: {e.Message}"),
        TunnelException { IsTls: true } => new(ProxyErrorKind.TlsFailure, e.Message),
        Weft.Identity.IdentityException { CertificateUnavailable: true } => new(ProxyErrorKind.NoCertificate, e.Message),
        HboneException { StatusCode: 403 } => new(ProxyErrorKind.Denied, $"{destination} refused the tunnel: not authorized"),
        HboneException h => new(ProxyErrorKind.ConnectFailure, $"tunnel to {destination}: {h.Message}{(h.InnerException is null ? "" : ": " + h.InnerException.Message)}"),
        OperationCanceledException => new(ProxyErrorKind.UpstreamConnectFailure, $"tunnel to {destination}: timed out"),
        TunnelException or SocketException or Weft.Identity.IdentityException => new(ProxyErrorKind.UpstreamConnectFailure, $"tunnel to {destination}: {e.Message}"),
        _ => null,
    };

    /// <summary>A connect to the app (or a plaintext destination) that failed.</summary>
    public static ProxyError OfConnectFailure(SocketException e, IPEndPoint destination) =>
        new(ProxyErrorKind.UpstreamConnectFailure, $"connect {destination}: {e.SocketErrorCode}");
}

internal static class FlowErrors
{
    /// <summary>Records <paramref name="error"/> on the flow: its response flag and its reason.</summary>
    public static void Record(this Flow flow, ProxyError error)
    {
        flow.ResponseFlags = error.Flag;
        flow.Error = error.Reason;
    }
}
