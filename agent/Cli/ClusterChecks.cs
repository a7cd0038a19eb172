using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Weft.Cli;

/// <summary>
/// <c>weft check --cluster</c>: what only the API server knows. Whether the agent DaemonSet has rolled out
/// to every node, and, when the agents get their certificates from the CA service (<c>--ca-address</c> in the
/// DaemonSet), whether that service has ready replicas and one of them answers a TLS handshake.
/// </summary>
internal static class ClusterChecks
{
    public const string CaSelector = "app.kubernetes.io/name=weft,app.kubernetes.io/component=ca";
    public const string CaAddressFlag = "--ca-address";

    private static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);

    public static async Task<List<Check>> RunAsync(IKubernetes kube, CancellationToken cancellationToken)
    {
        var checks = new List<Check>();
        var daemonSets = await ListAsync(() => kube.AppsV1.ListNamespacedDaemonSetAsync(PodPortForward.Namespace,
            labelSelector: PodPortForward.AgentSelector, cancellationToken: cancellationToken), "daemonsets").ConfigureAwait(false);
        var daemonSet = daemonSets.Items.FirstOrDefault();
        var agents = daemonSet is null ? [] : (await ListAsync(() => kube.CoreV1.ListNamespacedPodAsync(PodPortForward.Namespace,
            labelSelector: PodPortForward.AgentSelector, cancellationToken: cancellationToken), "pods").ConfigureAwait(false)).Items;
        checks.Add(DaemonSetCheck(daemonSet, agents));
        checks.Add(await CaServiceCheckAsync(kube, daemonSet, cancellationToken).ConfigureAwait(false));
        return checks;
    }

    /// <summary>Rolled out when the controller has seen the current spec and every scheduled agent is updated and ready.</summary>
    internal static Check DaemonSetCheck(V1DaemonSet? daemonSet, IEnumerable<V1Pod> agentPods)
    {
        const string Name = "daemonset";
        if (daemonSet is null)
        {
            return Check.Fail(Name, $"no agent DaemonSet in {PodPortForward.Namespace} (labels {PodPortForward.AgentSelector})", "kubectl apply -k daemonset/ (see README, Deploy)");
        }

        var name = $"{PodPortForward.Namespace}/{daemonSet.Metadata.Name}";
        var status = daemonSet.Status;
        var desired = status?.DesiredNumberScheduled ?? 0;
        var updated = status?.UpdatedNumberScheduled ?? 0;
        var ready = status?.NumberReady ?? 0;
        var rollout = $"kubectl -n {PodPortForward.Namespace} rollout status daemonset/{daemonSet.Metadata.Name}";
        if ((status?.ObservedGeneration ?? 0) < (daemonSet.Metadata.Generation ?? 0))
        {
            return Check.Fail(Name, $"{name}: the controller has not yet seen generation {daemonSet.Metadata.Generation} (observed {status?.ObservedGeneration ?? 0})", rollout);
        }

        if (desired == 0)
        {
            return Check.Fail(Name, $"{name} is scheduled on no node", $"kubectl -n {PodPortForward.Namespace} describe daemonset/{daemonSet.Metadata.Name} (node selector, tolerations)");
        }

        if (updated == desired && ready == desired)
        {
            return Check.Ok(Name, $"{name}: {ready}/{desired} agents ready, all at the current revision");
        }

        var notReady = agentPods
            .Where(p => p.Metadata.DeletionTimestamp is null && !IsReady(p))
            .Select(p => p.Spec?.NodeName ?? p.Metadata.Name)
            .Order(StringComparer.Ordinal)
            .ToList();
        var nodes = notReady.Count == 0 ? "" : $"; not ready on {string.Join(", ", notReady)}";
        var fix = notReady.Count == 0 ? rollout : $"{rollout}; weft check --node {notReady[0]}";
        return Check.Fail(Name, $"{name}: {ready}/{desired} agents ready, {updated}/{desired} updated{nodes}", fix);
    }

    /// <summary>The CA service the agent container is pointed at with <c>--ca-address URL</c>, if any.</summary>
    internal static Uri? CaAddress(V1DaemonSet daemonSet)
    {
        var agent = daemonSet.Spec?.Template?.Spec?.Containers?.FirstOrDefault(c => c.Name == "agent");
        var args = (agent?.Command ?? []).Concat(agent?.Args ?? []).ToList();
        for (var i = 0; i < args.Count; i++)
        {
            var value = args[i] == CaAddressFlag && i + 1 < args.Count ? args[i + 1]
                : args[i].StartsWith(CaAddressFlag + "=", StringComparison.Ordinal) ? args[i][(CaAddressFlag.Length + 1)..] : null;
            if (value is not null)
            {
                return Uri.TryCreate(value, UriKind.Absolute, out var uri) ? uri : null;
            }
        }

        return null;
    }

    private static async Task<Check> CaServiceCheckAsync(IKubernetes kube, V1DaemonSet? daemonSet, CancellationToken cancellationToken)
    {
        const string Name = "ca service";
        if (daemonSet is null)
        {
            return Check.Skip(Name, "no agent DaemonSet to say whether the agents use one");
        }

        if (CaAddress(daemonSet) is not { } address)
        {
            return Check.Skip(Name, $"the agents sign their own certificates (no {CaAddressFlag} in the DaemonSet)");
        }

        var deployments = (await ListAsync(() => kube.AppsV1.ListNamespacedDeploymentAsync(PodPortForward.Namespace,
            labelSelector: CaSelector, cancellationToken: cancellationToken), "deployments").ConfigureAwait(false)).Items;
        if (deployments.FirstOrDefault() is not { } deployment)
        {
            return Check.Fail(Name, $"the agents ask {address} ({CaAddressFlag}) but {PodPortForward.Namespace} has no CA Deployment (labels {CaSelector})", "kubectl apply -k daemonset/ (see docs/ca.md)");
        }

        var name = $"{PodPortForward.Namespace}/{deployment.Metadata.Name}";
        var desired = deployment.Spec?.Replicas ?? 1;
        var ready = deployment.Status?.ReadyReplicas ?? 0;
        var describe = $"kubectl -n {PodPortForward.Namespace} describe deployment/{deployment.Metadata.Name}";
        var pods = (await ListAsync(() => kube.CoreV1.ListNamespacedPodAsync(PodPortForward.Namespace,
            labelSelector: CaSelector, cancellationToken: cancellationToken), "pods").ConfigureAwait(false)).Items;
        var pod = pods.FirstOrDefault(p => p.Metadata.DeletionTimestamp is null && IsReady(p));
        if (ready == 0 || pod is null)
        {
            return Check.Fail(Name, $"{name}: no ready replica of {desired}; agents keep their certificates until they expire, new workloads get none", describe);
        }

        var port = address.Port > 0 ? address.Port : 443;
        var answer = await HandshakeAsync(kube, pod, port, cancellationToken).ConfigureAwait(false);
        if (answer.Error is { } error)
        {
            return Check.Fail(Name, $"{name}: {ready}/{desired} ready, but pod {pod.Metadata.Name} port {port}: {error}", $"kubectl -n {PodPortForward.Namespace} logs {pod.Metadata.Name}");
        }

        var detail = $"{name}: {ready}/{desired} ready; pod {pod.Metadata.Name} port {port} answered {answer.Handshake}";
        return ready < desired
            ? Check.Warn(Name, detail + $"; {desired - ready} replica(s) not ready", describe)
            : Check.Ok(Name, detail);
    }

    /// <summary>A TLS 1.2+ handshake offering h2, as an agent's gRPC client makes it; the CA's certificate is shown, not judged (the trust bundle is the agents').</summary>
    private static async Task<(string? Handshake, string? Error)> HandshakeAsync(IKubernetes kube, V1Pod pod, int port, CancellationToken cancellationToken)
    {
        try
        {
            await using var forward = await PodPortForward.OpenAsync(kube, pod.Spec?.NodeName ?? "?", PodPortForward.Namespace, pod.Metadata.Name, port, cancellationToken).ConfigureAwait(false);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(HandshakeTimeout);
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(IPEndPoint.Parse(forward.Address), timeout.Token).ConfigureAwait(false);
            X509Certificate2? served = null;
            await using var tls = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false, (_, certificate, _, _) =>
            {
                served = certificate is null ? null : X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
                return true;
            });
            try
            {
                await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = "weft-ca",
                    ApplicationProtocols = [SslApplicationProtocol.Http2],
                    EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                }, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is AuthenticationException or IOException || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                var reason = e is OperationCanceledException ? $"no TLS answer within {HandshakeTimeout.TotalSeconds:0} s" : $"TLS handshake failed: {e.Message}";
                return (null, forward.LastError is { } kubelet ? $"{reason} ({kubelet.Split('\n')[0].Trim()})" : reason);
            }

            using (served)
            {
                if (tls.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
                {
                    return (null, "TLS answered without h2, which gRPC needs");
                }

                var version = tls.SslProtocol switch { SslProtocols.Tls13 => "TLS 1.3", SslProtocols.Tls12 => "TLS 1.2", var other => other.ToString() };
                var until = served is null ? "" : $", certificate until {served.NotAfter.ToUniversalTime():yyyy-MM-ddTHH:mm:ssZ}";
                return ($"{version} with h2{until}", null);
            }
        }
        catch (AdminUnreachableException e)
        {
            return (null, e.Message);
        }
        catch (SocketException e)
        {
            return (null, e.Message);
        }
    }

    private static bool IsReady(V1Pod pod) =>
        pod.Status?.Phase == "Running" && (pod.Status.Conditions ?? []).Any(c => c.Type == "Ready" && c.Status == "True");

    private static async Task<T> ListAsync<T>(Func<Task<T>> list, string resource)
    {
        try
        {
            return await list().ConfigureAwait(false);
        }
        catch (HttpOperationException e) when (e.Response?.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
        {
            throw new AdminUnreachableException($"the Kubernetes API refused to list {resource} in {PodPortForward.Namespace} ({(int)e.Response.StatusCode}): bind the weft-cli Role (daemonset/rbac.yaml) to your user.", e);
        }
        catch (HttpOperationException e)
        {
            throw new AdminUnreachableException($"the Kubernetes API answered {(int?)e.Response?.StatusCode} listing {resource} in {PodPortForward.Namespace}: {e.Response?.Content?.Split('\n')[0] ?? e.Message}", e);
        }
        catch (HttpRequestException e)
        {
            throw new AdminUnreachableException($"cannot reach the Kubernetes API: {(e.InnerException?.Message ?? e.Message).Split('\n')[0]}", e);
        }
    }
}
