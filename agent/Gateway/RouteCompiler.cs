using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Gateway;

/// <summary>
/// Objects to <see cref="RouteTable"/>: a pure function of the objects of one inventory version (Ingress,
/// IngressClass, GatewayClass, Gateway, HTTPRoute, ReferenceGrant, TLS Secrets) and the Services and endpoints
/// the inventory built from the same objects. What cannot be used is left out with a warning naming it; a
/// reference that cannot be resolved stays in as a backend that answers 500, as Gateway API requires.
/// <code>
///   Ingress (class weft) ─► host patterns ─► routes sorted by Kubernetes precedence ─┐
///   HTTPRoute ─► parentRefs ─► listeners (allowedRoutes, hostname ∩) ─► routes sorted ─┼─► RouteTable
///   Ingress tls / Gateway HTTPS listeners ─► Secrets ─► certificates by SNI ──────────┘
/// </code>
/// </summary>
internal static partial class RouteCompiler
{
    /// <summary>The ingressClassName served even without an IngressClass object of that name.</summary>
    public const string BuiltInIngressClass = "weft";

    public const string DefaultClassAnnotation = "ingressclass.kubernetes.io/is-default-class";

    /// <param name="report">When given, filled with what was decided about each object, for status (Kubernetes mode).</param>
    public static RouteTable Compile(IReadOnlyList<IKubernetesObject> objects, InventorySnapshot inventory, GatewayStatusReport? report = null)
    {
        ArgumentNullException.ThrowIfNull(objects);
        ArgumentNullException.ThrowIfNull(inventory);
        var state = new CompileState(objects, inventory, report ?? new GatewayStatusReport());
        state.CompileIngresses();
        state.CompileHttpRoutes();
        return state.ToTable();
    }

    /// <summary>Lower case, without a trailing dot; null for none.</summary>
    internal static string? NormalizeHost(string? host) =>
        string.IsNullOrEmpty(host) ? null : host.TrimEnd('.').ToLowerInvariant();

    /// <summary>
    /// A rule's timeouts: null when it has none ("0s" is none); <paramref name="invalid"/> says why they cannot be used:
    /// a value that is not a Gateway API Duration, or a backendRequest longer than a request timeout that is not 0s
    /// (the API server's CEL rule, which a file does not pass through).
    /// </summary>
    internal static RouteTimeouts? CompileTimeouts(HttpRouteTimeouts? given, out string? invalid)
    {
        invalid = null;
        if (given is null)
        {
            return null;
        }

        TimeSpan request = TimeSpan.Zero, backend = TimeSpan.Zero;
        if (given.Request is { } r && !GatewayDuration.TryParse(r, out request))
        {
            invalid = $"timeouts.request '{r}' is not a Gateway API duration (such as 10s, 500ms, 1m30s)";
            return null;
        }

        if (given.BackendRequest is { } b && !GatewayDuration.TryParse(b, out backend))
        {
            invalid = $"timeouts.backendRequest '{b}' is not a Gateway API duration (such as 10s, 500ms, 1m30s)";
            return null;
        }

        if (request > TimeSpan.Zero && backend > request)
        {
            invalid = $"timeouts.backendRequest {given.BackendRequest} is longer than timeouts.request {given.Request}";
            return null;
        }

        return request == TimeSpan.Zero && backend == TimeSpan.Zero ? null
            : new RouteTimeouts(request > TimeSpan.Zero ? request : null, backend > TimeSpan.Zero ? backend : null);
    }

    private static string Key(V1ObjectMeta? meta) => $"{Namespace(meta)}/{meta?.Name}";

    private static string Namespace(V1ObjectMeta? meta) => string.IsNullOrEmpty(meta?.NamespaceProperty) ? "default" : meta.NamespaceProperty;

    /// <summary>Oldest first, then by namespace/name: how both APIs break ties between objects.</summary>
    private static IEnumerable<T> InPrecedenceOrder<T>(IEnumerable<T> items)
        where T : IKubernetesObject<V1ObjectMeta> =>
        items.OrderBy(i => i.Metadata?.CreationTimestamp ?? DateTime.MinValue).ThenBy(i => Key(i.Metadata), StringComparer.Ordinal);

    private sealed class CompileState(IReadOnlyList<IKubernetesObject> objects, InventorySnapshot inventory, GatewayStatusReport report)
    {
        private readonly List<string> _warnings = [];
        private readonly Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>> _gatewayHttp = [];
        private readonly Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>> _gatewayHttps = [];
        private readonly Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>> _ingress = [];

        // Each Gateway's own HTTP and HTTPS routes and certificates ("namespace/name"), for a Gateway served on addresses of its own.
        private readonly Dictionary<string, Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>>> _perGatewayHttp = new(StringComparer.Ordinal);
        private readonly Dictionary<string, Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>>> _perGatewayHttps = new(StringComparer.Ordinal);
        private readonly Dictionary<string, List<(HostPattern Pattern, SslStreamCertificateContext Certificate)>> _perGatewayCertificates = new(StringComparer.Ordinal);
        private readonly List<(HostPattern Pattern, SslStreamCertificateContext Certificate)> _certificates = [];
        private readonly Dictionary<string, SslStreamCertificateContext?> _secrets = new(StringComparer.Ordinal);
        private Route? _defaultRoute;

        // The first unresolved backendRef of the HTTPRoute being compiled (ResolvedRefs=False), or null.
        private ConditionReport? _unresolvedRef;

        // The rules of the HTTPRoute being compiled that are dropped for an invalid value: why, and the condition reason.
        private readonly List<(int Rule, string Reason, string Condition)> _droppedRules = [];

        public void CompileIngresses()
        {
            var ourClasses = objects.OfType<V1IngressClass>().Where(c => c.Spec?.Controller == GatewayApiKinds.ControllerName).ToList();
            var classNames = ourClasses.Select(c => c.Metadata?.Name).OfType<string>().ToHashSet(StringComparer.Ordinal);
            var othersNamedWeft = objects.OfType<V1IngressClass>().Any(c => c.Metadata?.Name == BuiltInIngressClass && c.Spec?.Controller != GatewayApiKinds.ControllerName);
            if (!othersNamedWeft)
            {
                classNames.Add(BuiltInIngressClass);
            }

            var weAreDefault = ourClasses.Any(c => c.Metadata?.Annotations?.TryGetValue(DefaultClassAnnotation, out var value) == true && value == "true");
            var ordinal = 0;
            foreach (var ingress in InPrecedenceOrder(objects.OfType<V1Ingress>()))
            {
                var className = ingress.Spec?.IngressClassName;
                if (className is null && ingress.Metadata?.Annotations?.TryGetValue("kubernetes.io/ingress.class", out var legacy) == true)
                {
                    className = legacy;
                }

                if (className is null ? !weAreDefault : !classNames.Contains(className))
                {
                    continue;
                }

                report.Ingresses.Add(Key(ingress.Metadata));
                CompileIngress(ingress, ordinal++);
            }
        }

        private void CompileIngress(V1Ingress ingress, int ordinal)
        {
            var ns = Namespace(ingress.Metadata);
            var source = $"Ingress {Key(ingress.Metadata)}";
            if (ingress.Spec?.DefaultBackend is { } defaultBackend)
            {
                if (_defaultRoute is null)
                {
                    _defaultRoute = new Route { Source = source + " defaultBackend", Path = PathMatch.Everything, Action = new RouteAction { Backends = [IngressBackend(ns, defaultBackend, source)] } };
                }
                else
                {
                    Warn($"{source}: defaultBackend ignored, {_defaultRoute.Source} came first");
                }
            }

            foreach (var rule in (ingress.Spec?.Rules ?? []).OfType<V1IngressRule>())
            {
                var host = NormalizeHost(rule.Host);
                var pattern = host is null ? HostPattern.AnyHost
                    : host.StartsWith("*.", StringComparison.Ordinal) ? new HostPattern(HostPatternKind.WildcardOneLabel, host)
                    : new HostPattern(HostPatternKind.Exact, host);
                if (host is not null && host.AsSpan(1).Contains('*'))
                {
                    Warn($"{source}: host '{rule.Host}' skipped: a wildcard must be the whole first label");
                    continue;
                }

                foreach (var path in (rule.Http?.Paths ?? []).OfType<V1HTTPIngressPath>())
                {
                    var value = string.IsNullOrEmpty(path.Path) ? "/" : path.Path;
                    if (value[0] != '/')
                    {
                        Warn($"{source}: path '{value}' skipped: it must start with '/'");
                        continue;
                    }

                    // ImplementationSpecific is served as Prefix (docs/gateway.md).
                    var kind = path.PathType == "Exact" ? PathMatchKind.Exact : PathMatchKind.Prefix;
                    var match = new PathMatch(kind, value);
                    var routes = Bucket(_ingress, pattern);
                    if (routes.Any(r => r.Route.Path.Kind == kind && (kind == PathMatchKind.Exact ? r.Route.Path.Value == value : r.Route.Path.Trimmed == match.Trimmed)))
                    {
                        Warn($"{source}: {pattern} {match} ignored: an older Ingress serves it");
                        continue;
                    }

                    var route = new Route { Source = source, Path = match, Action = new RouteAction { Backends = [IngressBackend(ns, path.Backend, source)] } };

                    // Kubernetes: the longest matching path wins; at equal length Exact beats Prefix.
                    var length = kind == PathMatchKind.Exact ? value.Length : match.Trimmed.Length;
                    routes.Add((route, [-length, kind == PathMatchKind.Exact ? 0 : 1, ordinal]));
                }
            }

            foreach (var tls in (ingress.Spec?.Tls ?? []).OfType<V1IngressTLS>())
            {
                if (string.IsNullOrEmpty(tls.SecretName))
                {
                    Warn($"{source}: a tls entry without secretName ignored");
                    continue;
                }

                if (Certificate(ns, tls.SecretName, source) is not { } certificate)
                {
                    continue;
                }

                var hosts = tls.Hosts?.Select(NormalizeHost).OfType<string>().ToList() ?? [];
                if (hosts.Count == 0)
                {
                    _certificates.Add((HostPattern.AnyHost, certificate));
                }

                foreach (var host in hosts)
                {
                    _certificates.Add((host.StartsWith("*.", StringComparison.Ordinal) ? new HostPattern(HostPatternKind.WildcardOneLabel, host) : new HostPattern(HostPatternKind.Exact, host), certificate));
                }
            }
        }

        private Backend IngressBackend(string ns, V1IngressBackend? backend, string source)
        {
            if (backend?.Service is not { } service || string.IsNullOrEmpty(service.Name))
            {
                Warn($"{source}: a backend that is not a Service answers 500 (resource backends are not supported)");
                return new Backend { Name = "(resource)", Invalid = "only Service backends are supported" };
            }

            var port = service.Port;
            var name = $"{ns}/{service.Name}:{port?.Number?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? port?.Name}";
            if (!inventory.TryGetService(ns, service.Name, out var found))
            {
                // Like ingress-nginx: a Service that does not exist (yet) has no endpoints, so 503.
                Warn($"{source}: Service {ns}/{service.Name} not found; its requests get 503");
                return new Backend { Name = name, ServiceName = service.Name, ServiceNamespace = ns, ServiceHost = $"{service.Name}.{ns}.svc.cluster.local" };
            }

            var servicePort = found.Ports.FirstOrDefault(p => port?.Number is { } number ? p.Port == number : p.Name == port?.Name);
            if (servicePort is null)
            {
                Warn($"{source}: Service {ns}/{service.Name} has no port {port?.Number?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? port?.Name}; its requests get 503");
            }

            return ServiceBackend(found, servicePort, name, 1);
        }

        private static Backend ServiceBackend(Service service, ServicePort? port, string name, int weight) => new()
        {
            Name = name,
            ServiceName = service.Name,
            ServiceNamespace = service.Namespace,
            ServiceHost = $"{service.Name}.{service.Namespace}.svc.cluster.local",
            Weight = weight,
            H2c = port?.IsH2c ?? false,
            Endpoints = port is null ? [] : [.. ServiceResolution.ReadyEndpoints(service, port, AddressFamily.InterNetwork), .. ServiceResolution.ReadyEndpoints(service, port, AddressFamily.InterNetworkV6)],
        };

        public void CompileHttpRoutes()
        {
            var classes = objects.OfType<GatewayClassResource>().Where(c => c.Spec.ControllerName == GatewayApiKinds.ControllerName)
                .Select(c => c.Metadata.Name).ToHashSet(StringComparer.Ordinal);
            report.AcceptedClasses.UnionWith(classes);
            var gateways = objects.OfType<GatewayResource>().Where(g => g.Spec.GatewayClassName is { } name && classes.Contains(name))
                .ToDictionary(g => Key(g.Metadata), StringComparer.Ordinal);
            foreach (var gateway in gateways.Values)
            {
                _perGatewayHttp[Key(gateway.Metadata)] = [];
                _perGatewayHttps[Key(gateway.Metadata)] = [];
                _perGatewayCertificates[Key(gateway.Metadata)] = [];
                CompileListeners(gateway);
            }

            var ordinal = 0;
            foreach (var route in InPrecedenceOrder(objects.OfType<HttpRouteResource>()))
            {
                CompileHttpRoute(route, gateways, ordinal++);
            }
        }

        private void CompileListeners(GatewayResource gateway)
        {
            var ns = Namespace(gateway.Metadata);
            var listeners = new List<ListenerReport>();
            report.Gateways[Key(gateway.Metadata)] = listeners;
            foreach (var listener in gateway.Spec.Listeners ?? [])
            {
                var source = $"Gateway {Key(gateway.Metadata)} listener {listener.Name}";
                var status = new ListenerReport(listener.Name ?? "");
                listeners.Add(status);
                var (accepted, resolved) = CompileListener(listener, ns, source, status, _perGatewayCertificates[Key(gateway.Metadata)]);
                status.Conditions.Add(accepted);
                status.Conditions.Add(resolved);

                // A listener that names kinds it cannot serve besides HTTPRoute still serves HTTPRoutes.
                var serves = accepted.Status && (resolved.Status || (resolved.Reason == "InvalidRouteKinds" && status.SupportedKinds.Count > 0));
                status.Conditions.Add(serves
                    ? new ConditionReport("Programmed", true, "Programmed", "served")
                    : new ConditionReport("Programmed", false, "Invalid", "not served: " + (accepted.Status ? resolved.Message : accepted.Message)));
            }
        }

        /// <summary>The listener's certificates into the table; its Accepted and ResolvedRefs conditions (upstream reasons).</summary>
        private (ConditionReport Accepted, ConditionReport ResolvedRefs) CompileListener(GatewayListener listener, string ns, string source, ListenerReport status,
            List<(HostPattern Pattern, SslStreamCertificateContext Certificate)> gatewayCertificates)
        {
            var resolved = new ConditionReport("ResolvedRefs", true, "ResolvedRefs", "all references resolved");
            if (listener.Protocol is not ("HTTP" or "HTTPS"))
            {
                Warn($"{source}: protocol {listener.Protocol} is not served (HTTP and HTTPS are)");
                return (new ConditionReport("Accepted", false, "UnsupportedProtocol", $"protocol {listener.Protocol} is not served (HTTP and HTTPS are)"), resolved);
            }

            if (AdmitsHttpRoutes(listener))
            {
                status.SupportedKinds.Add("HTTPRoute");
            }

            if (listener.AllowedRoutes?.Kinds?.Where(k => !IsHttpRoute(k)).Select(k => $"{k.Group}/{k.Kind}").ToList() is { Count: > 0 } unsupported)
            {
                Warn($"{source}: route kinds {string.Join(", ", unsupported)} are not served (HTTPRoute is)");
                resolved = new ConditionReport("ResolvedRefs", false, "InvalidRouteKinds", $"route kinds {string.Join(", ", unsupported)} are not served (HTTPRoute is)");
            }

            var accepted = new ConditionReport("Accepted", true, "Accepted", "listener accepted");
            if (listener.Protocol != "HTTPS")
            {
                return (accepted, resolved);
            }

            if (listener.Tls?.Mode is { } mode && mode != "Terminate")
            {
                Warn($"{source}: TLS mode {mode} is not served (Terminate is)");
                return (new ConditionReport("Accepted", false, "UnsupportedValue", $"TLS mode {mode} is not served (Terminate is)"), resolved);
            }

            foreach (var reference in listener.Tls?.CertificateRefs ?? [])
            {
                var refNs = reference.Namespace ?? ns;
                if ((reference.Kind ?? "Secret") != "Secret" || !string.IsNullOrEmpty(reference.Group) || string.IsNullOrEmpty(reference.Name))
                {
                    Warn($"{source}: certificateRef {reference.Kind} {reference.Name} ignored: only core Secrets are read");
                    resolved = new ConditionReport("ResolvedRefs", false, "InvalidCertificateRef", $"certificateRef {reference.Group}/{reference.Kind} {reference.Name} is not a core Secret");
                    continue;
                }

                if (refNs != ns && !Granted("Gateway", ns, "", "Secret", refNs, reference.Name))
                {
                    Warn($"{source}: Secret {refNs}/{reference.Name} ignored: no ReferenceGrant in {refNs} allows it");
                    resolved = new ConditionReport("ResolvedRefs", false, "RefNotPermitted", $"no ReferenceGrant in {refNs} allows Gateways of {ns} to use Secret {reference.Name}");
                    continue;
                }

                if (Certificate(refNs, reference.Name, source) is { } certificate)
                {
                    _certificates.Add((GatewayHostPattern(NormalizeHost(listener.Hostname)), certificate));
                    gatewayCertificates.Add((GatewayHostPattern(NormalizeHost(listener.Hostname)), certificate));
                }
                else
                {
                    resolved = new ConditionReport("ResolvedRefs", false, "InvalidCertificateRef", $"Secret {refNs}/{reference.Name} is missing or is not a usable kubernetes.io/tls Secret");
                }
            }

            if (listener.Tls?.CertificateRefs is not { Count: > 0 })
            {
                resolved = new ConditionReport("ResolvedRefs", false, "InvalidCertificateRef", "an HTTPS listener needs a certificateRef");
            }

            return (accepted, resolved);
        }

        private static bool IsHttpRoute(RouteGroupKind kind) => (kind.Group ?? GatewayApiKinds.Group) == GatewayApiKinds.Group && kind.Kind == "HTTPRoute";

        /// <summary>An HTTP or HTTPS listener admits HTTPRoutes unless its allowedRoutes.kinds leave them out.</summary>
        private static bool AdmitsHttpRoutes(GatewayListener listener) =>
            listener.Protocol is "HTTP" or "HTTPS" && (listener.AllowedRoutes?.Kinds is not { Count: > 0 } kinds || kinds.Any(IsHttpRoute));

        private static HostPattern GatewayHostPattern(string? host) =>
            host is null ? HostPattern.AnyHost
            : host.StartsWith("*.", StringComparison.Ordinal) ? new HostPattern(HostPatternKind.WildcardSuffix, host)
            : new HostPattern(HostPatternKind.Exact, host);

        private void CompileHttpRoute(HttpRouteResource httpRoute, Dictionary<string, GatewayResource> gateways, int ordinal)
        {
            var ns = Namespace(httpRoute.Metadata);
            var source = $"HTTPRoute {Key(httpRoute.Metadata)}";
            var routeHosts = httpRoute.Spec.Hostnames?.Select(NormalizeHost).OfType<string>().ToList() ?? [];

            // Gateway ("namespace/name"), listener (by protocol) and the hostnames a route serves on it.
            var attachments = new List<(string Gateway, bool Https, string? Hostname)>();
            var parents = new List<(ObjectReference Parent, ConditionReport Accepted)>();
            foreach (var parent in httpRoute.Spec.ParentRefs ?? [])
            {
                if ((parent.Kind ?? "Gateway") != "Gateway" || (parent.Group ?? GatewayApiKinds.Group) != GatewayApiKinds.Group)
                {
                    continue;
                }

                var gatewayNs = parent.Namespace ?? ns;
                if (!gateways.TryGetValue($"{gatewayNs}/{parent.Name}", out var gateway))
                {
                    continue;
                }

                // The most specific reason a parentRef attaches nowhere, in the order Gateway API checks them.
                bool named = false, allowed = false, attached = false;
                var listenerReports = report.Gateways.GetValueOrDefault($"{gatewayNs}/{parent.Name}") ?? [];
                foreach (var listener in gateway.Spec.Listeners ?? [])
                {
                    if ((parent.SectionName is { } section && section != listener.Name)
                        || (parent.Port is { } port && port != listener.Port))
                    {
                        continue;
                    }

                    // A listener of another protocol, or whose allowedRoutes.kinds leave HTTPRoute out, is there but does not allow it.
                    named = true;
                    if (!AdmitsHttpRoutes(listener) || !Allowed(listener.AllowedRoutes, gatewayNs, ns))
                    {
                        continue;
                    }

                    allowed = true;
                    var hostnames = Intersect(NormalizeHost(listener.Hostname), routeHosts).ToList();
                    if (hostnames.Count > 0 && listenerReports.FirstOrDefault(l => l.Name == listener.Name) is { } listenerReport)
                    {
                        listenerReport.AttachedRoutes++;
                    }

                    foreach (var hostname in hostnames)
                    {
                        attached = true;
                        attachments.Add(($"{gatewayNs}/{parent.Name}", listener.Protocol == "HTTPS", hostname));
                    }
                }

                parents.Add((parent, attached ? new ConditionReport("Accepted", true, "Accepted", "attached")
                    : !named ? new ConditionReport("Accepted", false, "NoMatchingParent", $"Gateway {gatewayNs}/{parent.Name} has no listener matching sectionName {parent.SectionName} port {parent.Port}")
                    : !allowed ? new ConditionReport("Accepted", false, "NotAllowedByListeners", $"no listener of Gateway {gatewayNs}/{parent.Name} allows HTTPRoutes from namespace {ns}")
                    : new ConditionReport("Accepted", false, "NoMatchingListenerHostname", $"no hostname of the route intersects a listener hostname of Gateway {gatewayNs}/{parent.Name}")));
            }

            // Backends are resolved even when nothing attaches, so ResolvedRefs is reported either way.
            _unresolvedRef = null;
            _droppedRules.Clear();
            var rules = httpRoute.Spec.Rules ?? [];
            var compiledRules = rules.Select((rule, i) => CompileRule(rule, ns, $"{source} rule {i}", i)).ToList();
            if (parents.Count > 0)
            {
                var resolved = _unresolvedRef ?? new ConditionReport("ResolvedRefs", true, "ResolvedRefs", "all references resolved");
                report.Routes[Key(httpRoute.Metadata)] = [.. parents.Select(p => ParentReport(p.Parent, p.Accepted, resolved, rules.Count))];
            }

            if (attachments.Count == 0)
            {
                Warn($"{source}: not attached to any listener of a Gateway of class {GatewayApiKinds.ControllerName} (parentRefs, allowedRoutes, hostnames)");
                return;
            }

            for (var ruleIndex = 0; ruleIndex < rules.Count; ruleIndex++)
            {
                if (compiledRules[ruleIndex] is not { } routes)
                {
                    continue;
                }

                for (var matchIndex = 0; matchIndex < routes.Count; matchIndex++)
                {
                    var compiled = routes[matchIndex];

                    // Gateway API precedence: Exact path, longest prefix, method, most headers, most query
                    // parameters, then the oldest route, then rule and match order.
                    IComparable[] order =
                    [
                        compiled.Path.Kind switch { PathMatchKind.Exact => 0, PathMatchKind.RegularExpression => 1, _ => 2 },
                        -compiled.Path.Value.Length,
                        compiled.Method is null ? 1 : 0,
                        -compiled.Headers.Length,
                        -compiled.Query.Length,
                        ordinal,
                        ruleIndex,
                        matchIndex,
                    ];
                    // Every Gateway's listeners together (--http, --https), and each Gateway's listeners on its own.
                    foreach (var (https, hostname) in attachments.Select(a => (a.Https, a.Hostname)).Distinct())
                    {
                        Bucket(https ? _gatewayHttps : _gatewayHttp, GatewayHostPattern(hostname)).Add((compiled, order));
                    }

                    foreach (var (gateway, https, hostname) in attachments.Distinct())
                    {
                        Bucket((https ? _perGatewayHttps : _perGatewayHttp)[gateway], GatewayHostPattern(hostname)).Add((compiled, order));
                    }
                }
            }
        }

        /// <summary>
        /// A parentRef's conditions once the route's rules are known. Gateway API's "Drop Rule(s)": an accepted route
        /// with some invalid rules serves the others and says which it dropped in PartiallyInvalid (True,
        /// UnsupportedValue, a message starting "Dropped Rule"); with every rule invalid it is not accepted
        /// (the first dropped rule's reason: UnsupportedValue, or IncompatibleFilters). A parentRef not accepted for another reason keeps that reason.
        /// </summary>
        private RouteParentReport ParentReport(ObjectReference parent, ConditionReport accepted, ConditionReport resolved, int ruleCount)
        {
            if (!accepted.Status || _droppedRules.Count == 0)
            {
                return new RouteParentReport(parent, accepted, resolved);
            }

            var dropped = string.Join("; ", _droppedRules.Select(d => $"Dropped Rule {d.Rule}: {d.Reason}"));
            return _droppedRules.Count == ruleCount
                ? new RouteParentReport(parent, new ConditionReport("Accepted", false, _droppedRules[0].Condition, $"no rule can be served: {dropped}"), resolved)
                : new RouteParentReport(parent, accepted, resolved, new ConditionReport("PartiallyInvalid", true, "UnsupportedValue", dropped));
        }

        /// <summary>
        /// A rule's routes, one per match in order; null when the rule is dropped for a value the gateway cannot serve
        /// (Gateway API's "Drop Rule(s)": the API server's schema and CEL rules would have refused most of them, a file
        /// does not pass through it, and an enum may gain values the gateway does not know). The rule is then not
        /// served at all, not even its valid matches, and the route's status says why.
        /// </summary>
        private List<Route>? CompileRule(HttpRouteRule rule, string ns, string source, int ruleIndex)
        {
            List<Route> routes;
            try
            {
                var timeouts = CompileTimeouts(rule.Timeouts, out var invalidTimeouts);
                if (invalidTimeouts is not null)
                {
                    throw new InvalidRuleException(invalidTimeouts);
                }

                var filters = CompileFilters(rule.Filters ?? []);
                var matches = rule.Matches is { Count: > 0 } given ? given : [new HttpRouteMatch()];
                var compiledMatches = matches.Select(CompileMatch).ToList();

                // Only now, so that a dropped rule's backendRefs do not count for ResolvedRefs.
                var action = RuleAction(rule, ns, source, filters, timeouts);
                routes = [.. compiledMatches.Select(m => new Route { Source = source, Path = m.Path, Method = m.Method, Headers = m.Headers, Query = m.Query, Action = action })];
            }
            catch (InvalidRuleException ex)
            {
                var reason = ex.Reason;
                Warn($"{source}: dropped, not served: {ex.Message}");
                _droppedRules.Add((ruleIndex, ex.Message, reason));
                return null;
            }

            return routes;
        }

        private static (PathMatch Path, string? Method, ImmutableArray<ValueMatch> Headers, ImmutableArray<ValueMatch> Query) CompileMatch(HttpRouteMatch match)
        {
            var pathType = match.Path?.Type ?? "PathPrefix";
            var value = match.Path?.Value ?? "/";
            PathMatch path;
            try
            {
                path = pathType switch
                {
                    "Exact" => new PathMatch(PathMatchKind.Exact, value),
                    "PathPrefix" => new PathMatch(PathMatchKind.Prefix, value),
                    "RegularExpression" => new PathMatch(PathMatchKind.RegularExpression, value),
                    _ => throw new InvalidRuleException($"path match type '{pathType}' is not supported (Exact, PathPrefix, RegularExpression are)"),
                };
            }
            catch (RegexParseException ex)
            {
                throw new InvalidRuleException($"path '{value}' is not a regular expression .NET reads: {ex.Message}");
            }

            if (pathType != "RegularExpression" && (value.Length == 0 || value[0] != '/'))
            {
                throw new InvalidRuleException($"path '{value}' must start with '/'");
            }

            if (match.Method is { } method && !HttpMethods.Contains(method))
            {
                throw new InvalidRuleException($"method '{method}' is not supported (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH are)");
            }

            return (path, match.Method, [.. (match.Headers ?? []).Select(h => Value(h, "header"))], [.. (match.QueryParams ?? []).Select(q => Value(q, "query parameter"))]);

            static ValueMatch Value(HttpValueMatch match, string what)
            {
                CheckHeaderName(match.Name, $"{what} match");
                try
                {
                    return new ValueMatch(match.Name!, match.Value ?? "", (match.Type ?? "Exact") switch
                    {
                        "Exact" => false,
                        "RegularExpression" => true,
                        var other => throw new InvalidRuleException($"{what} match type '{other}' is not supported (Exact, RegularExpression are)"),
                    });
                }
                catch (RegexParseException ex)
                {
                    throw new InvalidRuleException($"{what} {match.Name}: '{match.Value}' is not a regular expression .NET reads: {ex.Message}");
                }
            }
        }

        /// <param name="Extension">An ExtensionRef filter, which the gateway cannot resolve: the rule then answers 500.</param>
        private sealed record RuleFilters(HeaderModifier? RequestHeaders, HeaderModifier? ResponseHeaders, RedirectAction? Redirect, RewriteAction? Rewrite, ObjectReference? Extension);

        /// <summary>A rule's filters; an <see cref="InvalidRuleException"/> for one the gateway cannot apply as written.</summary>
        private static RuleFilters CompileFilters(List<HttpRouteFilter> filters)
        {
            HeaderModifier? requestHeaders = null, responseHeaders = null;
            RedirectAction? redirect = null;
            RewriteAction? rewrite = null;
            ObjectReference? extension = null;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var filter in filters)
            {
                if (filter.Type is { } type && type != "ExtensionRef" && !seen.Add(type))
                {
                    throw new InvalidRuleException($"filter {type} is given more than once");
                }

                switch (filter.Type)
                {
                    case "RequestHeaderModifier" when filter.RequestHeaderModifier is { } modifier:
                        requestHeaders = Headers(modifier, "requestHeaderModifier");
                        break;
                    case "ResponseHeaderModifier" when filter.ResponseHeaderModifier is { } modifier:
                        responseHeaders = Headers(modifier, "responseHeaderModifier");
                        break;
                    case "RequestRedirect" when filter.RequestRedirect is { } r:
                        if (r.Scheme is not (null or "http" or "https"))
                        {
                            throw new InvalidRuleException($"requestRedirect.scheme '{r.Scheme}' is not supported (http, https are)");
                        }

                        if (r.Port is < 1 or > 65535)
                        {
                            throw new InvalidRuleException($"requestRedirect.port {r.Port} is not a port (1-65535)");
                        }

                        if (r.StatusCode is { } code && !RedirectStatusCodes.Contains(code))
                        {
                            throw new InvalidRuleException($"requestRedirect.statusCode {code} is not supported (301, 302, 303, 307, 308 are)");
                        }

                        redirect = new RedirectAction(r.Scheme, NormalizeHost(r.Hostname), r.Port, PathModifierOf(r.Path, "requestRedirect"), r.StatusCode ?? 302);
                        break;
                    case "URLRewrite" when filter.UrlRewrite is { } r:
                        rewrite = new RewriteAction(NormalizeHost(r.Hostname), PathModifierOf(r.Path, "urlRewrite"));
                        break;
                    case "ExtensionRef" when filter.ExtensionRef is { } reference:
                        extension ??= reference;
                        break;
                    case "RequestHeaderModifier" or "ResponseHeaderModifier" or "RequestRedirect" or "URLRewrite" or "ExtensionRef":
                        throw new InvalidRuleException($"filter {filter.Type} has no {char.ToLowerInvariant(filter.Type[0])}{filter.Type[1..]} field");
                    default:
                        // Gateway API: an unknown filter type makes the route not Accepted, UnsupportedValue; so is one the gateway does not implement.
                        throw new InvalidRuleException($"filter {filter.Type ?? "(no type)"} is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite are)");
                }
            }

            if (redirect is not null && rewrite is not null)
            {
                throw new InvalidRuleException("filters RequestRedirect and URLRewrite cannot be used together", "IncompatibleFilters");
            }

            return new RuleFilters(requestHeaders, responseHeaders, redirect, rewrite, extension);

            static HeaderModifier Headers(HttpHeaderFilter f, string field)
            {
                foreach (var name in (f.Set ?? []).Select(h => h.Name).Concat((f.Add ?? []).Select(h => h.Name)).Concat(f.Remove ?? []))
                {
                    CheckHeaderName(name, field);
                }

                return new HeaderModifier(
                    [.. (f.Set ?? []).Select(h => KeyValuePair.Create(h.Name!, h.Value ?? ""))],
                    [.. (f.Add ?? []).Select(h => KeyValuePair.Create(h.Name!, h.Value ?? ""))],
                    [.. f.Remove ?? []]);
            }

            static PathModifier? PathModifierOf(HttpPathModifier? p, string field) => p?.Type switch
            {
                null => null,
                "ReplaceFullPath" => new PathModifier(PathModifierKind.ReplaceFullPath, p.ReplaceFullPath ?? "/"),
                "ReplacePrefixMatch" => new PathModifier(PathModifierKind.ReplacePrefixMatch, p.ReplacePrefixMatch ?? "/"),
                var other => throw new InvalidRuleException($"{field}.path.type '{other}' is not supported (ReplaceFullPath, ReplacePrefixMatch are)"),
            };
        }

        /// <summary>Gateway API's HTTPHeaderName (the CRD's pattern and length); an <see cref="InvalidRuleException"/> otherwise.</summary>
        private static void CheckHeaderName(string? name, string where)
        {
            if (string.IsNullOrEmpty(name) || name.Length > 256 || !HeaderName().IsMatch(name))
            {
                throw new InvalidRuleException($"{where}: '{name}' is not a valid name (Gateway API's HTTPHeaderName: a token of RFC 7230, at most 256 characters)");
            }
        }

        /// <summary>What a rule does, once its values are known to be valid.</summary>
        private RouteAction RuleAction(HttpRouteRule rule, string ns, string source, RuleFilters filters, RouteTimeouts? timeouts)
        {
            if (filters.Extension is { } extension)
            {
                // Gateway API: a custom filter that cannot be resolved is not skipped; the requests it would have processed get an error.
                var name = $"{extension.Group}/{extension.Kind} {extension.Name}";
                var message = $"extensionRef filter {name} cannot be resolved (the gateway has no custom filters)";
                _unresolvedRef ??= new ConditionReport("ResolvedRefs", false, "InvalidKind", message);
                Warn($"{source}: answers 500: {message}");
                return new RouteAction { Backends = [new Backend { Name = $"(filter {name})", Invalid = $"InvalidKind: {message}" }], Timeouts = timeouts };
            }

            var backends = ImmutableArray.CreateBuilder<Backend>();
            foreach (var reference in rule.BackendRefs ?? [])
            {
                backends.Add(GatewayBackend(reference, ns, source));
            }

            return new RouteAction
            {
                Backends = backends.ToImmutable(),
                RequestHeaders = filters.RequestHeaders,
                ResponseHeaders = filters.ResponseHeaders,
                Redirect = filters.Redirect,
                Rewrite = filters.Rewrite,
                Timeouts = timeouts,
            };
        }

        private Backend GatewayBackend(ObjectReference reference, string routeNs, string source)
        {
            var ns = reference.Namespace ?? routeNs;
            var weight = Math.Max(0, reference.Weight ?? 1);
            var name = $"{ns}/{reference.Name}:{reference.Port}";
            (string Reason, string Message)? problem = null;
            Service? service = null;
            if ((reference.Kind ?? "Service") != "Service" || !string.IsNullOrEmpty(reference.Group))
            {
                problem = ("InvalidKind", $"{reference.Group}/{reference.Kind} is not a Service");
            }
            else if (ns != routeNs && !Granted("HTTPRoute", routeNs, "", "Service", ns, reference.Name))
            {
                problem = ("RefNotPermitted", $"no ReferenceGrant in {ns} allows HTTPRoutes of {routeNs} to reach Service {reference.Name}");
            }
            else if (string.IsNullOrEmpty(reference.Name) || !inventory.TryGetService(ns, reference.Name, out service))
            {
                problem = ("BackendNotFound", $"Service {ns}/{reference.Name} does not exist");
            }
            else if (reference.Port is not { } port || service.Ports.FirstOrDefault(p => p.Port == port) is null)
            {
                problem = ("BackendNotFound", $"Service {ns}/{reference.Name} has no port {reference.Port}");
            }

            if (problem is { } found)
            {
                var invalid = $"{found.Reason}: {found.Message}";
                _unresolvedRef ??= new ConditionReport("ResolvedRefs", false, found.Reason, $"backendRef {name}: {found.Message}");
                Warn($"{source}: backendRef {name} answers 500: {invalid}");
                return new Backend { Name = name, Weight = weight, Invalid = invalid };
            }

            return ServiceBackend(service!, service!.Ports.First(p => p.Port == reference.Port), name, weight);
        }

        /// <summary>A ReferenceGrant in <paramref name="toNs"/> lets <paramref name="fromKind"/>s of <paramref name="fromNs"/> refer to this object.</summary>
        private bool Granted(string fromKind, string fromNs, string toGroup, string toKind, string toNs, string? toName) =>
            objects.OfType<ReferenceGrantResource>().Any(grant =>
                Namespace(grant.Metadata) == toNs
                && (grant.Spec.From ?? []).Any(f => f.Group == GatewayApiKinds.Group && f.Kind == fromKind && f.Namespace == fromNs)
                && (grant.Spec.To ?? []).Any(t => (t.Group ?? "") == toGroup && t.Kind == toKind && (t.Name is null || t.Name == toName)));

        private bool Allowed(AllowedRoutes? allowed, string gatewayNs, string routeNs)
        {
            switch (allowed?.Namespaces?.From ?? "Same")
            {
                case "All":
                    return true;
                case "Same":
                    return gatewayNs == routeNs;
                case "Selector":
                    // The API server puts kubernetes.io/metadata.name on every namespace (Kubernetes 1.22+); a file need not.
                    var labels = new Dictionary<string, string>(inventory.TryGetNamespace(routeNs, out var meshNamespace) ? meshNamespace.Labels : new Dictionary<string, string>(), StringComparer.Ordinal)
                    {
                        ["kubernetes.io/metadata.name"] = routeNs,
                    };
                    var selector = allowed!.Namespaces!.Selector;
                    return (selector?.MatchLabels ?? new Dictionary<string, string>()).All(l => labels.TryGetValue(l.Key, out var v) && v == l.Value)
                        && (selector?.MatchExpressions ?? []).All(e => e.OperatorProperty switch
                        {
                            "In" => labels.TryGetValue(e.Key, out var v) && (e.Values ?? []).Contains(v),
                            "NotIn" => !labels.TryGetValue(e.Key, out var v) || !(e.Values ?? []).Contains(v),
                            "Exists" => labels.ContainsKey(e.Key),
                            "DoesNotExist" => !labels.ContainsKey(e.Key),
                            _ => false,
                        });
                default:
                    return false;
            }
        }

        /// <summary>
        /// The hostnames a route serves on a listener (Gateway API): null for every host; nothing when they do not
        /// intersect (the route is not attached there).
        /// </summary>
        internal static IEnumerable<string?> Intersect(string? listener, IReadOnlyList<string> route)
        {
            if (route.Count == 0)
            {
                return [listener];
            }

            if (listener is null)
            {
                return route;
            }

            var result = new List<string?>();
            foreach (var host in route)
            {
                if (host == listener || (IsWildcard(listener) && Covers(listener, host)))
                {
                    result.Add(host);
                }
                else if (IsWildcard(host) && Covers(host, listener))
                {
                    result.Add(listener);
                }
            }

            return result.Distinct();

            static bool IsWildcard(string h) => h.StartsWith("*.", StringComparison.Ordinal);

            // "*.a.com" covers "b.a.com" and "*.b.a.com": a "*" label stands for one or more labels.
            static bool Covers(string wildcard, string host) => host.Length > wildcard.Length - 1 && host.EndsWith(wildcard[1..], StringComparison.Ordinal);
        }

        private SslStreamCertificateContext? Certificate(string ns, string name, string source)
        {
            var key = $"{ns}/{name}";
            if (_secrets.TryGetValue(key, out var cached))
            {
                return cached;
            }

            SslStreamCertificateContext? context = null;
            var secret = objects.OfType<V1Secret>().FirstOrDefault(s => Key(s.Metadata) == key);
            if (secret is null)
            {
                Warn($"{source}: TLS Secret {key} not found");
            }
            else if (secret.Type != "kubernetes.io/tls")
            {
                Warn($"{source}: Secret {key} is of type {secret.Type}, not kubernetes.io/tls");
            }
            else
            {
                var certificate = SecretValue(secret, "tls.crt");
                var privateKey = SecretValue(secret, "tls.key");
                try
                {
                    if (certificate is null || privateKey is null)
                    {
                        throw new CryptographicException("tls.crt or tls.key is missing");
                    }

                    var chain = new X509Certificate2Collection();
                    chain.ImportFromPem(certificate);
                    var leaf = X509Certificate2.CreateFromPem(certificate, privateKey);
                    context = SslStreamCertificateContext.Create(leaf, [.. chain.Skip(1)], offline: true);
                }
                catch (Exception ex) when (UnreadableCrypto.Is(ex))
                {
                    // Only this Secret is unusable; every other route still compiles.
                    Warn($"{source}: TLS Secret {key} cannot be used: {ex.Message}");
                }
            }

            _secrets[key] = context;
            return context;

            static string? SecretValue(V1Secret secret, string field) =>
                secret.Data?.TryGetValue(field, out var bytes) == true ? Encoding.UTF8.GetString(bytes)
                : secret.StringData?.TryGetValue(field, out var text) == true ? text : null;
        }

        private static List<(Route Route, IComparable[] Order)> Bucket(Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>> buckets, HostPattern pattern)
        {
            if (!buckets.TryGetValue(pattern, out var list))
            {
                buckets[pattern] = list = [];
            }

            return list;
        }

        private void Warn(string warning) => _warnings.Add(warning);

        public RouteTable ToTable()
        {
            return new RouteTable
            {
                Http = new ListenerRoutes(Hosts(_gatewayHttp), _defaultRoute),
                Https = new ListenerRoutes(Hosts(_gatewayHttps), _defaultRoute),
                GatewayHttp = PerGateway(_perGatewayHttp),
                GatewayHttps = PerGateway(_perGatewayHttps),
                GatewayCertificates = _perGatewayCertificates.ToImmutableDictionary(g => g.Key, g => new CertificateSet(g.Value, null), StringComparer.Ordinal),
                Certificates = new CertificateSet(_certificates, null),
                Warnings = [.. _warnings.Distinct(StringComparer.Ordinal)],
            };

            // Gateway API routes of a host come before the Ingress ones of the same host pattern.
            IEnumerable<VirtualHost> Hosts(Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>> gateway) =>
                gateway.Keys.Concat(_ingress.Keys).Distinct().Select(pattern => new VirtualHost(pattern,
                [
                    .. Sorted(gateway.GetValueOrDefault(pattern)),
                    .. Sorted(_ingress.GetValueOrDefault(pattern)),
                ]));

            static ImmutableDictionary<string, ListenerRoutes> PerGateway(Dictionary<string, Dictionary<HostPattern, List<(Route Route, IComparable[] Order)>>> perGateway) =>
                perGateway.ToImmutableDictionary(g => g.Key, g => new ListenerRoutes(g.Value.Select(h => new VirtualHost(h.Key, [.. Sorted(h.Value)])), null), StringComparer.Ordinal);

            static IEnumerable<Route> Sorted(List<(Route Route, IComparable[] Order)>? routes) =>
                (routes ?? []).OrderBy(r => r.Order, OrderComparer.Instance).Select(r => r.Route);
        }
    }

    /// <summary>HTTPRouteMatch.method's enum.</summary>
    private static readonly FrozenSet<string> HttpMethods = FrozenSet.Create(StringComparer.Ordinal, "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH");

    /// <summary>HTTPRequestRedirectFilter.statusCode's enum (301 and 302 are core; the others upstream added later).</summary>
    private static readonly FrozenSet<int> RedirectStatusCodes = FrozenSet.Create(301, 302, 303, 307, 308);

    /// <summary>Gateway API's HTTPHeaderName pattern (an RFC 7230 token), as the CRD has it.</summary>
    [GeneratedRegex("^[A-Za-z0-9!#$%&'*+\\-.^_`|~]+$")]
    private static partial Regex HeaderName();

    /// <summary>A value of an HTTPRoute rule that cannot be served: the rule is dropped; <see cref="Reason"/> is the condition's reason.</summary>
    private sealed class InvalidRuleException(string message, string reason = "UnsupportedValue") : Exception(message)
    {
        public string Reason { get; } = reason;
    }

    private sealed class OrderComparer : IComparer<IComparable[]>
    {
        public static readonly OrderComparer Instance = new();

        public int Compare(IComparable[]? x, IComparable[]? y)
        {
            for (var i = 0; i < Math.Min(x!.Length, y!.Length); i++)
            {
                var c = x[i].CompareTo(y[i]);
                if (c != 0)
                {
                    return c;
                }
            }

            return x.Length.CompareTo(y.Length);
        }
    }
}
