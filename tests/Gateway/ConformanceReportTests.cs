using System.Globalization;
using System.Reflection;
using System.Text;
using Weft.Tests.Daemonset;

namespace Weft.Tests.Gateway;

/// <summary>
/// docs/gateway-conformance-report.yaml, a ConformanceReport in the upstream format (gateway.networking.k8s.io/v1),
/// is generated from the table below, and the table names the tests that show each scenario: a scenario is listed
/// as passed only when every test named for it exists here (and so runs, and must pass, with the unit group).
/// Renaming or deleting such a test, or editing the report by hand, fails this test. To regenerate the file after
/// changing the table: WEFT_WRITE_CONFORMANCE_REPORT=1 dotnet test --filter ConformanceReportTests.
/// </summary>
public class ConformanceReportTests
{
    private const string ReportDate = "2026-12-01T00:00:00Z";

    /// <summary>Upstream core tests of the GATEWAY-HTTP profile with a port here: upstream name, the tests that show it.</summary>
    private static readonly (string Scenario, string[] Tests)[] Core =
    [
        ("HTTPRouteCrossNamespace", ["HttpRouteConformanceTests.HTTPRouteCrossNamespace"]),
        ("HTTPRouteExactPathMatching", ["HttpRouteConformanceTests.HTTPRouteExactPathMatching"]),
        ("HTTPRouteHTTPSListener", ["HttpRouteConformanceTests.HTTPRouteHTTPSListener"]),
        ("HTTPRouteHeaderMatching", ["HttpRouteConformanceTests.HTTPRouteHeaderMatching"]),
        ("HTTPRouteHostnameIntersection", ["HttpRouteConformanceTests.HTTPRouteHostnameIntersection", "GatewayKubernetesTests.HTTPRouteHostnameIntersection_RouteWithNoIntersectingHostname_AcceptedIsFalse_NoMatchingListenerHostname"]),
        ("HTTPRouteInvalidBackendRefUnknownKind", ["GatewayKubernetesTests.HTTPRouteInvalidBackendRefUnknownKind_ResolvedRefsIsFalse_InvalidKind"]),
        ("HTTPRouteInvalidCrossNamespaceBackendRef", ["HttpRouteConformanceTests.HTTPRouteInvalidCrossNamespaceBackendRef", "GatewayKubernetesTests.HTTPRouteInvalidCrossNamespaceBackendRef_ResolvedRefsIsFalse_RefNotPermitted"]),
        ("HTTPRouteInvalidCrossNamespaceParentRef", ["HttpRouteConformanceTests.HTTPRouteInvalidCrossNamespaceParentRef", "GatewayKubernetesTests.HTTPRouteInvalidCrossNamespaceParentRef_AcceptedIsFalse_NotAllowedByListeners"]),
        ("HTTPRouteInvalidNonExistentBackendRef", ["HttpRouteConformanceTests.HTTPRouteInvalidNonExistentBackendRef", "GatewayKubernetesTests.HTTPRouteInvalidNonExistentBackendRef_ResolvedRefsIsFalse_BackendNotFound"]),
        ("HTTPRouteInvalidParentRefNotMatchingSectionName", ["GatewayKubernetesTests.HTTPRouteInvalidParentRefNotMatchingSectionName_AcceptedIsFalse_NoMatchingParent"]),
        ("HTTPRouteInvalidReferenceGrant", ["HttpRouteConformanceTests.HTTPRouteInvalidReferenceGrant", "GatewayKubernetesTests.HTTPRouteInvalidReferenceGrant_ResolvedRefsIsFalse_RefNotPermitted_UntilAGrantAllowsIt"]),
        ("HTTPRouteListenerHostnameMatching", ["HttpRouteConformanceTests.HTTPRouteListenerHostnameMatching", "GatewayKubernetesTests.HTTPRouteListenerHostnameMatching_EachRouteIsAcceptedOnItsListener_AndListenersCountThem"]),
        ("HTTPRouteMatching", ["HttpRouteConformanceTests.HTTPRouteMatching"]),
        ("HTTPRouteMatchingAcrossRoutes", ["HttpRouteConformanceTests.HTTPRouteMatchingAcrossRoutes"]),
        ("HTTPRouteMultipleGateways", ["HttpRouteConformanceTests.HTTPRouteMultipleGateways"]),
        ("HTTPRouteObservedGenerationBump", ["GatewayKubernetesTests.HTTPRouteObservedGenerationBump_StatusFollowsTheNewGeneration_AndKeepsItsTransitionTime"]),
        ("HTTPRoutePathMatchOrder", ["HttpRouteConformanceTests.HTTPRoutePathMatchOrder"]),
        ("HTTPRouteRedirectHostAndStatus", ["HttpRouteConformanceTests.HTTPRouteRedirectHostAndStatus"]),
        ("HTTPRouteReferenceGrant", ["HttpRouteConformanceTests.HTTPRouteReferenceGrant", "GatewayKubernetesTests.HTTPRouteInvalidReferenceGrant_ResolvedRefsIsFalse_RefNotPermitted_UntilAGrantAllowsIt"]),
        ("HTTPRouteRequestHeaderModifier", ["HttpRouteConformanceTests.HTTPRouteRequestHeaderModifier"]),
        ("HTTPRouteSimpleSameNamespace", ["HttpRouteConformanceTests.HTTPRouteSimpleSameNamespace", "GatewayKubernetesTests.HTTPRouteSimpleSameNamespace_RouteIsAcceptedWithResolvedRefs"]),
        ("HTTPRouteWeight", ["HttpRouteConformanceTests.HTTPRouteWeight"]),
        ("GatewayClassObservedGenerationBump", ["GatewayConformanceTests.GatewayClassObservedGenerationBump"]),
        ("GatewayInvalidRouteKind", ["GatewayConformanceTests.GatewayInvalidRouteKind"]),
        ("GatewayInvalidTLSConfiguration", ["GatewayConformanceTests.GatewayInvalidTLSConfiguration", "GatewayKubernetesTests.GatewayInvalidTLSConfiguration_ListenerResolvedRefsIsFalse_InvalidCertificateRef"]),
        ("GatewayModifyListeners", ["GatewayConformanceTests.GatewayModifyListeners"]),
        ("GatewayObservedGenerationBump", ["GatewayConformanceTests.GatewayObservedGenerationBump"]),
        ("GatewaySecretInvalidReferenceGrant", ["GatewayConformanceTests.GatewaySecretInvalidReferenceGrant"]),
        ("GatewaySecretMissingReferenceGrant", ["GatewayConformanceTests.GatewaySecretMissingReferenceGrant"]),
        ("GatewaySecretReferenceGrantAllInNamespace", ["GatewayConformanceTests.GatewaySecretReferenceGrantAllInNamespace"]),
        ("GatewaySecretReferenceGrantSpecific", ["GatewayConformanceTests.GatewaySecretReferenceGrantSpecific"]),
        ("GatewayWithAttachedRoutes", ["GatewayConformanceTests.GatewayWithAttachedRoutes"]),
        ("HTTPRouteDisallowedKind", ["GatewayConformanceTests.HTTPRouteDisallowedKind"]),
        ("HTTPRoutePartiallyInvalidViaInvalidReferenceGrant", ["GatewayConformanceTests.HTTPRoutePartiallyInvalidViaInvalidReferenceGrant"]),
        ("HTTPRouteServiceTypes", ["GatewayConformanceTests.HTTPRouteServiceTypes"]),
        ("HTTPRouteNoBackendRefs", ["GatewayConformanceTests.HTTPRouteNoBackendRefs", "HttpRouteConformanceTests.HTTPRouteNoBackendRefs_Answers500"]),
    ];

    /// <summary>Upstream core tests of the profile not ported yet: reported as skipped, never as passed.</summary>
    private static readonly string[] CoreNotPorted = [];

    /// <summary>Extended tests with a port here: upstream name, the feature it shows, the tests.</summary>
    private static readonly (string Scenario, string Feature, string[] Tests)[] Extended =
    [
        ("HTTPRouteResponseHeaderModifier", "HTTPRouteResponseHeaderModification", ["HttpRouteConformanceTests.HTTPRouteResponseHeaderModifier"]),
        ("HTTPRouteRequestTimeout", "HTTPRouteRequestTimeout", ["HttpRouteConformanceTests.HTTPRouteRequestTimeout", "GatewayTimeoutTests.ABackendThatHoldsItsAnswer_PastTheRequestTimeout_Gets504UT_InMetricsAndAccessLog_AndTheBackendSeesTheAbort"]),

        // Upstream's feature for backendRequest is named HTTPRouteBackendTimeout (pkg/features), its test HTTPRouteBackendRequestTimeout.
        ("HTTPRouteBackendRequestTimeout", "HTTPRouteBackendTimeout", ["HttpRouteConformanceTests.HTTPRouteBackendRequestTimeout"]),
        ("HTTPRouteBackendProtocolH2C", "HTTPRouteBackendProtocolH2C", ["GatewayBackendProtocolTests.HTTPRouteBackendProtocolH2C"]),
        ("HTTPRouteBackendProtocolWebSocket", "HTTPRouteBackendProtocolWebSocket", ["GatewayBackendProtocolTests.HTTPRouteBackendProtocolWebSocket"]),
        ("HTTPRouteRewriteHost", "HTTPRouteHostRewrite", ["HttpRouteConformanceTests.HTTPRouteRewritePath_AndRewriteHost"]),
        ("HTTPRouteRewritePath", "HTTPRoutePathRewrite", ["HttpRouteConformanceTests.HTTPRouteRewritePath_AndRewriteHost"]),
    ];

    private static string ReportPath => Path.Combine(ManifestValidator.RepositoryRoot, "docs", "gateway-conformance-report.yaml");

    [Fact]
    public void EveryScenarioReportedAsPassed_IsShownByTestsThatExist()
    {
        var tests = typeof(ConformanceReportTests).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(ConformanceReportTests).Namespace)
            .SelectMany(t => t.GetMethods().Where(m => m.GetCustomAttributes<FactAttribute>().Any()).Select(m => $"{t.Name}.{m.Name}"))
            .ToHashSet(StringComparer.Ordinal);

        var missing = Core.SelectMany(s => s.Tests).Concat(Extended.SelectMany(s => s.Tests)).Where(t => !tests.Contains(t)).ToList();

        Assert.True(missing.Count == 0, $"the report names tests that do not exist: {string.Join(", ", missing)}");
        Assert.Empty(Core.Select(s => s.Scenario).Intersect(CoreNotPorted));
    }

    [Fact]
    public void CommittedReport_IsTheOneTheTestsProduce()
    {
        var expected = Generate();
        if (Environment.GetEnvironmentVariable("WEFT_WRITE_CONFORMANCE_REPORT") == "1")
        {
            File.WriteAllText(ReportPath, expected);
        }

        var committed = File.Exists(ReportPath) ? File.ReadAllText(ReportPath).ReplaceLineEndings("\n") : "(missing)";

        Assert.True(committed == expected, $"{ReportPath} is not what the tests show; regenerate it (see this class's summary). Expected:\n{expected}");
    }

    private static string Generate()
    {
        var text = new StringBuilder();
        void Line(string line) => text.Append(line).Append('\n');
        string Count(int n) => n.ToString(CultureInfo.InvariantCulture);

        Line("# Generated by tests/Gateway/ConformanceReportTests.cs from the tests that show each scenario; do not edit by hand.");
        Line("# The scenarios are ports of the upstream conformance tests (same names, namespaces, backends and assertions)");
        Line("# run against the real gateway on loopback and, for status, against a wire-level fake API server: not a run");
        Line("# of the upstream suite against a cluster (docs/gateway.md says what that means).");
        Line("apiVersion: gateway.networking.k8s.io/v1");
        Line("kind: ConformanceReport");
        Line($"date: \"{ReportDate}\"");
        Line("gatewayAPIChannel: standard");
        Line("gatewayAPIVersion: v1.3.0");
        Line("implementation:");
        Line("  contact:");
        Line("  - weft maintainers");
        Line("  organization: weft");
        Line("  project: weft");
        Line("  url: docs/gateway.md in the weft repository");
        Line("  version: v0.1.0");
        Line("mode: default");
        Line("profiles:");
        Line("- name: GATEWAY-HTTP");
        Line("  core:");
        Line($"    result: {(CoreNotPorted.Length == 0 ? "success" : "partial")}");
        // The upstream format counts passed tests; their names go in comments, so the file stays in that format.
        foreach (var (scenario, _) in Core.OrderBy(s => s.Scenario, StringComparer.Ordinal))
        {
            Line($"    # passed: {scenario}");
        }

        if (CoreNotPorted.Length > 0)
        {
            Line("    skippedTests:");
            foreach (var scenario in CoreNotPorted.Order(StringComparer.Ordinal))
            {
                Line($"    - {scenario}");
            }
        }

        Line("    statistics:");
        Line("      Failed: 0");
        Line($"      Passed: {Count(Core.Length)}");
        Line($"      Skipped: {Count(CoreNotPorted.Length)}");
        Line("  extended:");
        Line("    result: success");
        foreach (var (scenario, _, _) in Extended.OrderBy(s => s.Scenario, StringComparer.Ordinal))
        {
            Line($"    # passed: {scenario}");
        }

        Line("    statistics:");
        Line("      Failed: 0");
        Line($"      Passed: {Count(Extended.Length)}");
        Line("      Skipped: 0");
        Line("    supportedFeatures:");
        foreach (var feature in Extended.Select(s => s.Feature).Distinct().Order(StringComparer.Ordinal))
        {
            Line($"    - {feature}");
        }

        Line(CoreNotPorted.Length == 0
            ? "  summary: Core tests succeeded. Extended tests succeeded."
            : $"  summary: Core tests partially succeeded with {Count(CoreNotPorted.Length)} test skips (not ported yet). Extended tests succeeded.");

        return text.ToString();
    }
}
