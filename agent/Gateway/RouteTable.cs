using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Net;
using System.Net.Security;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http;

namespace Weft.Gateway;

internal enum PathMatchKind
{
    Exact,
    Prefix,
    RegularExpression,
}

/// <summary>
/// A path match. Prefix is element-wise, as both Ingress and Gateway API define it: "/foo" matches "/foo",
/// "/foo/" and "/foo/bar" but not "/foobar"; a trailing slash on the prefix is ignored.
/// </summary>
internal sealed record PathMatch(PathMatchKind Kind, string Value)
{
    public static readonly PathMatch Everything = new(PathMatchKind.Prefix, "/");

    private readonly Regex? _regex = Kind == PathMatchKind.RegularExpression ? new Regex($"^(?:{Value})$", RegexOptions.CultureInvariant, TimeSpan.FromMilliseconds(100)) : null;

    /// <summary>The prefix without its trailing slash ("" for "/"): what a path must equal or continue with a slash.</summary>
    public string Trimmed { get; } = Kind == PathMatchKind.Prefix ? Value.TrimEnd('/') : Value;

    public bool Matches(string path) => Kind switch
    {
        PathMatchKind.Exact => path == Value,
        PathMatchKind.Prefix => Trimmed.Length == 0
            || (path.StartsWith(Trimmed, StringComparison.Ordinal) && (path.Length == Trimmed.Length || path[Trimmed.Length] == '/')),
        _ => _regex!.IsMatch(path),
    };

    public override string ToString() => $"{Kind} {Value}";
}

/// <summary>A header or query parameter match: Exact (header names are case-insensitive) or RegularExpression.</summary>
internal sealed record ValueMatch(string Name, string Value, bool IsRegularExpression)
{
    private readonly Regex? _regex = IsRegularExpression ? new Regex($"^(?:{Value})$", RegexOptions.CultureInvariant, TimeSpan.FromMilliseconds(100)) : null;

    public bool Matches(string? actual) => actual is not null && (_regex?.IsMatch(actual) ?? actual == Value);
}

/// <summary>Header edits of RequestHeaderModifier and ResponseHeaderModifier.</summary>
internal sealed record HeaderModifier(
    ImmutableArray<KeyValuePair<string, string>> Set,
    ImmutableArray<KeyValuePair<string, string>> Add,
    ImmutableArray<string> Remove)
{
    public void Apply(IHeaderDictionary headers)
    {
        foreach (var (name, value) in Set)
        {
            headers[name] = value;
        }

        foreach (var (name, value) in Add)
        {
            headers.Append(name, value);
        }

        foreach (var name in Remove)
        {
            headers.Remove(name);
        }
    }
}

internal enum PathModifierKind
{
    ReplaceFullPath,
    ReplacePrefixMatch,
}

internal sealed record PathModifier(PathModifierKind Kind, string Value)
{
    /// <summary>The path after the modification; <paramref name="matched"/> is the rule's path match (ReplacePrefixMatch needs a Prefix one).</summary>
    public string Apply(string path, PathMatch matched)
    {
        if (Kind == PathModifierKind.ReplaceFullPath)
        {
            return Value;
        }

        // Element-wise: "/prefix" + "/rest" with "/prefix" replaced by "/new" gives "/new/rest", by "/" gives "/rest".
        var rest = path.Length >= matched.Trimmed.Length ? path[matched.Trimmed.Length..] : "";
        var replacement = Value.TrimEnd('/');
        var result = replacement + rest;
        return result.Length == 0 ? "/" : result[0] == '/' ? result : "/" + result;
    }
}

/// <summary>RequestRedirect: what is not given comes from the request (port: the scheme's well-known one when the scheme changes).</summary>
internal sealed record RedirectAction(string? Scheme, string? Hostname, int? Port, PathModifier? Path, int StatusCode);

internal sealed record RewriteAction(string? Hostname, PathModifier? Path);

/// <summary>
/// An HTTPRoute rule's timeouts; null for none ("0s" or not given). <see cref="Request"/> bounds the whole answer to
/// the client, <see cref="BackendRequest"/> one request to the backend from sending it to its whole response: both
/// run from when the gateway starts forwarding, and with no retries the shorter one is the one that fires.
/// </summary>
internal sealed record RouteTimeouts(TimeSpan? Request, TimeSpan? BackendRequest)
{
    /// <summary>"request 10s, backend 2s": as <c>/routes</c> and <c>weft routes</c> show them.</summary>
    public override string ToString() =>
        string.Join(", ", new[] { Request is { } r ? $"request {GatewayDuration.Format(r)}" : null, BackendRequest is { } b ? $"backend {GatewayDuration.Format(b)}" : null }.OfType<string>());
}

/// <summary>
/// Where a share of a rule's requests go: a Service port's ready endpoints, or nowhere with the reason (a
/// reference that is invalid, not permitted, or to nothing), which the client sees as a 500.
/// </summary>
internal sealed class Backend
{
    private int _next;
    private string?[]? _destinations;

    public required string Name { get; init; }

    /// <summary>"name.namespace.svc.cluster.local", Istio's destination_service.</summary>
    public string? ServiceHost { get; init; }

    public string? ServiceName { get; init; }

    public string? ServiceNamespace { get; init; }

    public int Weight { get; init; } = 1;

    /// <summary>Why requests for this backend get a 500; null when it is a usable Service.</summary>
    public string? Invalid { get; init; }

    public ImmutableArray<IPEndPoint> Endpoints { get; init; } = [];

    /// <summary>The Service port says HTTP/2 in cleartext (<see cref="Weft.Inventory.ServicePort.IsH2c"/>): requests go to it over HTTP/2 with prior knowledge.</summary>
    public bool H2c { get; init; }

    /// <summary>
    /// Round robin over the endpoints, skipping those <paramref name="isEjected"/> names; null when none is left.
    /// <paramref name="destination"/> is the endpoint's "http://ADDRESS:PORT" for the forwarder, made once per endpoint.
    /// </summary>
    public IPEndPoint? NextEndpoint(Func<IPEndPoint, bool> isEjected, out string? destination)
    {
        var endpoints = Endpoints;
        for (var i = 0; i < endpoints.Length; i++)
        {
            var index = (int)((uint)Interlocked.Increment(ref _next) % (uint)endpoints.Length);
            var candidate = endpoints[index];
            if (!isEjected(candidate))
            {
                destination = Destination(index);
                return candidate;
            }
        }

        destination = null;
        return null;
    }

    private string Destination(int index)
    {
        // Two requests racing here may each make the array or the string; either result is the same text.
        var destinations = _destinations ??= new string?[Endpoints.Length];
        return destinations[index] ??= "http://" + Endpoints[index];
    }

    public override string ToString() => Invalid is null ? $"{Name} ({Endpoints.Length} endpoints{(H2c ? ", h2c" : "")})" : $"{Name} (invalid: {Invalid})";
}

/// <summary>What a matched rule does: answer itself (redirect, fixed status) or forward to a weighted pick of its backends.</summary>
internal sealed class RouteAction
{
    public ImmutableArray<Backend> Backends { get; init; } = [];

    public HeaderModifier? RequestHeaders { get; init; }

    public HeaderModifier? ResponseHeaders { get; init; }

    public RedirectAction? Redirect { get; init; }

    public RewriteAction? Rewrite { get; init; }

    /// <summary>The rule's timeouts, or null when it has none (the common case: nothing is timed).</summary>
    public RouteTimeouts? Timeouts { get; init; }

    /// <summary>A weighted random pick; null when there is no backend or every weight is 0 (the client gets a 500).</summary>
    public Backend? PickBackend()
    {
        var total = 0;
        foreach (var backend in Backends)
        {
            total += backend.Weight;
        }

        if (total <= 0)
        {
            return null;
        }

        var ticket = Random.Shared.Next(total);
        foreach (var backend in Backends)
        {
            if (ticket < backend.Weight)
            {
                return backend;
            }

            ticket -= backend.Weight;
        }

        return null;
    }
}

/// <summary>One match of one rule: all of its conditions must hold.</summary>
internal sealed class Route
{
    /// <summary>Which object made it: "Ingress demo/web", "HTTPRoute demo/api rule 0".</summary>
    public required string Source { get; init; }

    public required PathMatch Path { get; init; }

    public string? Method { get; init; }

    public ImmutableArray<ValueMatch> Headers { get; init; } = [];

    public ImmutableArray<ValueMatch> Query { get; init; } = [];

    public required RouteAction Action { get; init; }

    public bool Matches(HttpRequest request, string path)
    {
        if (!Path.Matches(path) || (Method is not null && !string.Equals(request.Method, Method, StringComparison.Ordinal)))
        {
            return false;
        }

        foreach (var header in Headers)
        {
            if (!request.Headers.TryGetValue(header.Name, out var values) || !header.Matches(values.Count == 1 ? values[0] : string.Join(',', values.ToArray())))
            {
                return false;
            }
        }

        foreach (var query in Query)
        {
            // Gateway API: with a repeated parameter only the first value counts.
            if (!request.Query.TryGetValue(query.Name, out var values) || !query.Matches(values.Count > 0 ? values[0] : null))
            {
                return false;
            }
        }

        return true;
    }

    public override string ToString() => $"{Path}{(Method is null ? "" : $" {Method}")}{(Headers.IsEmpty ? "" : $" headers {string.Join(',', Headers.Select(h => h.Name))}")}{(Query.IsEmpty ? "" : $" query {string.Join(',', Query.Select(q => q.Name))}")}";
}

internal enum HostPatternKind
{
    /// <summary>Every host (an Ingress rule or an HTTPRoute without hostnames).</summary>
    Any,
    Exact,

    /// <summary>Ingress "*.foo.com": exactly one more label.</summary>
    WildcardOneLabel,

    /// <summary>Gateway API "*.foo.com": one or more labels.</summary>
    WildcardSuffix,
}

internal sealed record HostPattern(HostPatternKind Kind, string Value)
{
    public static readonly HostPattern AnyHost = new(HostPatternKind.Any, "*");

    /// <summary>".foo.com" of "*.foo.com".</summary>
    private string Suffix => Value[1..];

    public bool Matches(string host) => Kind switch
    {
        HostPatternKind.Any => true,
        HostPatternKind.Exact => host == Value,
        HostPatternKind.WildcardOneLabel => host.Length > Suffix.Length && host.EndsWith(Suffix, StringComparison.Ordinal) && !host.AsSpan(0, host.Length - Suffix.Length).Contains('.'),
        _ => host.Length > Suffix.Length && host.EndsWith(Suffix, StringComparison.Ordinal),
    };

    public override string ToString() => Value;
}

/// <summary>The routes of one host pattern, in the order they are tried (the precedence of their API).</summary>
internal sealed record VirtualHost(HostPattern Host, ImmutableArray<Route> Routes);

/// <summary>
/// What one kind of listener (plain HTTP, or HTTPS) serves: the most specific host pattern that matches the
/// request's host is chosen (exact, then longer wildcards, then any host), then its first route that matches;
/// no route there: the Ingress defaultBackend when there is one, else 404.
/// </summary>
internal sealed class ListenerRoutes
{
    public static readonly ListenerRoutes Empty = new([], null);

    private readonly FrozenDictionary<string, VirtualHost> _exact;
    private readonly ImmutableArray<VirtualHost> _patterns;

    public ListenerRoutes(IEnumerable<VirtualHost> hosts, Route? defaultRoute)
    {
        var all = hosts.ToImmutableArray();
        _exact = all.Where(h => h.Host.Kind == HostPatternKind.Exact).ToFrozenDictionary(h => h.Host.Value, StringComparer.Ordinal);
        _patterns = [.. all.Where(h => h.Host.Kind != HostPatternKind.Exact)
            .OrderBy(h => h.Host.Kind == HostPatternKind.Any ? 1 : 0)
            .ThenByDescending(h => h.Host.Value.Length)
            .ThenBy(h => h.Host.Kind)];
        DefaultRoute = defaultRoute;
        Hosts = [.. _exact.Values.OrderBy(h => h.Host.Value, StringComparer.Ordinal), .. _patterns];
    }

    public ImmutableArray<VirtualHost> Hosts { get; }

    public Route? DefaultRoute { get; }

    /// <param name="host">Lower case, without port or trailing dot.</param>
    /// <param name="path">The normalized path.</param>
    public Route? Match(string host, HttpRequest request, string path)
    {
        var virtualHost = _exact.GetValueOrDefault(host);
        if (virtualHost is null)
        {
            foreach (var candidate in _patterns)
            {
                if (candidate.Host.Matches(host))
                {
                    virtualHost = candidate;
                    break;
                }
            }
        }

        if (virtualHost is not null)
        {
            foreach (var route in virtualHost.Routes)
            {
                if (route.Matches(request, path))
                {
                    return route;
                }
            }
        }

        return DefaultRoute;
    }
}

/// <summary>Server certificates by SNI: exact names, then wildcards (longest first), then the default (may be none).</summary>
internal sealed class CertificateSet
{
    public static readonly CertificateSet Empty = new([], null);

    private readonly FrozenDictionary<string, SslStreamCertificateContext> _exact;
    private readonly ImmutableArray<(HostPattern Pattern, SslStreamCertificateContext Certificate)> _wildcards;

    public CertificateSet(IEnumerable<(HostPattern Pattern, SslStreamCertificateContext Certificate)> certificates, SslStreamCertificateContext? fallback)
    {
        var all = certificates.ToList();
        _exact = all.Where(c => c.Pattern.Kind == HostPatternKind.Exact).DistinctBy(c => c.Pattern.Value)
            .ToFrozenDictionary(c => c.Pattern.Value, c => c.Certificate, StringComparer.Ordinal);
        _wildcards = [.. all.Where(c => c.Pattern.Kind is HostPatternKind.WildcardOneLabel or HostPatternKind.WildcardSuffix).OrderByDescending(c => c.Pattern.Value.Length)];
        Fallback = fallback ?? all.FirstOrDefault(c => c.Pattern.Kind == HostPatternKind.Any).Certificate;
        Count = all.Count;
    }

    /// <summary>Served when the client's SNI names no certificate (or it sent none); null: such handshakes are refused.</summary>
    public SslStreamCertificateContext? Fallback { get; }

    public int Count { get; }

    public SslStreamCertificateContext? Select(string? serverName)
    {
        if (string.IsNullOrEmpty(serverName))
        {
            return Fallback;
        }

        var name = serverName.TrimEnd('.').ToLowerInvariant();
        if (_exact.TryGetValue(name, out var exact))
        {
            return exact;
        }

        foreach (var (pattern, certificate) in _wildcards)
        {
            if (pattern.Matches(name))
            {
                return certificate;
            }
        }

        return Fallback;
    }
}

/// <summary>Everything the gateway serves, compiled from one version of the objects; replaced whole on a change.</summary>
internal sealed record RouteTable
{
    public static readonly RouteTable Empty = new() { Http = ListenerRoutes.Empty, Https = ListenerRoutes.Empty, Certificates = CertificateSet.Empty };

    public required ListenerRoutes Http { get; init; }

    public required ListenerRoutes Https { get; init; }

    /// <summary>
    /// Each Gateway's HTTP listeners alone, by "namespace/name" (no Ingress, no other Gateway): what an address given to
    /// that Gateway serves (<see cref="GatewayOptions.GatewayHttp"/>); <see cref="Http"/> serves every Gateway together.
    /// Every Gateway of our class has an entry, empty when no route is attached.
    /// </summary>
    public ImmutableDictionary<string, ListenerRoutes> GatewayHttp { get; init; } = ImmutableDictionary<string, ListenerRoutes>.Empty;

    /// <summary>Each Gateway's HTTPS listeners alone, as <see cref="GatewayHttp"/> (<see cref="GatewayOptions.GatewayHttps"/>).</summary>
    public ImmutableDictionary<string, ListenerRoutes> GatewayHttps { get; init; } = ImmutableDictionary<string, ListenerRoutes>.Empty;

    /// <summary>Each Gateway's HTTPS listeners' certificates alone (no Ingress tls, no other Gateway's), chosen by SNI on its own address.</summary>
    public ImmutableDictionary<string, CertificateSet> GatewayCertificates { get; init; } = ImmutableDictionary<string, CertificateSet>.Empty;

    public required CertificateSet Certificates { get; init; }

    /// <summary>Objects, or parts of them, that were left out, and why.</summary>
    public ImmutableArray<string> Warnings { get; init; } = [];

    public long Version { get; init; }

    /// <summary>This table as served: numbered, with <paramref name="warnings"/>.</summary>
    public RouteTable Versioned(long version, ImmutableArray<string> warnings) => this with { Version = version, Warnings = warnings };

    /// <summary>
    /// Warnings for the Gateways given an address of their own (<see cref="GatewayOptions.GatewayHttp"/>,
    /// <see cref="GatewayOptions.GatewayHttps"/>, "namespace/name") that are not Gateways of our class here: until one
    /// is, its address answers 404 (HTTP) or refuses the handshake (HTTPS).
    /// </summary>
    public IEnumerable<string> UnknownGateways(IEnumerable<string> withAddresses) =>
        withAddresses.Distinct(StringComparer.Ordinal).Where(g => !GatewayHttp.ContainsKey(g)).Order(StringComparer.Ordinal)
            .Select(g => $"Gateway {g} has an address of its own (--gateway-http/--gateway-https) but is not a Gateway of a GatewayClass of weft.dev/gateway: its address answers 404 (HTTP) and refuses TLS handshakes until it is");
}
