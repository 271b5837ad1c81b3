//! Word pools for generated content.
//!
//! The strings deliberately cover what breaks naive JSON and text handling: accents in
//! composed and decomposed form (combining marks), CJK, right-to-left scripts, emoji with
//! skin tones and zero-width joiners, quotes, backslashes, tabs, control characters,
//! U+2028, `</script>` and markup.

/// A prompt and the gist of Copilot's answer to it.
pub(crate) struct Topic {
    pub locale: &'static str,
    pub prompt: &'static str,
    pub answer: &'static str,
    /// A document or meeting the answer refers to.
    pub reference: &'static str,
}

pub(crate) const TOPICS: &[Topic] = &[
    Topic {
        locale: "en-us",
        prompt: "What should be on my radar from emails last week?",
        answer: "It looks like there were no important emails from last week. However, I found some relevant meetings and files that might be of interest to you.",
        reference: "OnCall DRI Handbook-v3.pdf",
    },
    Topic {
        locale: "fr-fr",
        prompt: "Résume la réunion « Budget 2025 » et liste les décisions prises.",
        answer: "Voici le résumé : l'équipe a validé le budget révisé (+3 %) et reporté la décision sur l'outil de télémétrie à la réunion de jeudi. Élodie enverra le compte rendu.",
        reference: "Compte rendu – Budget 2025.docx",
    },
    Topic {
        locale: "de-de",
        prompt: "Fasse die Änderungen im Vertrag \"Rahmenvereinbarung Süd\" zusammen.",
        answer: "Die wichtigsten Änderungen: Kündigungsfrist von 3 auf 6 Monate verlängert, Haftungsgrenze auf 2 Mio. € erhöht, Gerichtsstand München.",
        reference: "Rahmenvereinbarung Süd v7.docx",
    },
    Topic {
        locale: "ja-jp",
        prompt: "先週の会議の要点をまとめてください。",
        answer: "先週の会議では、第3四半期の売上目標（前年比12％増）と新しい承認フローについて議論されました。次回の会議は金曜日です。",
        reference: "第3四半期 売上計画.xlsx",
    },
    Topic {
        locale: "zh-cn",
        prompt: "帮我起草一封邮件，通知团队下周一的系统维护。",
        answer: "主题：系统维护通知\n\n各位同事：\n下周一 22:00–24:00 将进行系统维护，期间 VPN 和邮件服务可能中断。请提前保存工作。",
        reference: "维护计划.docx",
    },
    Topic {
        locale: "ar-sa",
        prompt: "لخّص رسائل البريد الإلكتروني غير المقروءة من المدير المالي.",
        answer: "هناك ثلاث رسائل: طلب الموافقة على الميزانية، وتذكير بموعد التدقيق في ١٥ مارس، ودعوة إلى اجتماع اللجنة.",
        reference: "تقرير التدقيق ٢٠٢٤.pdf",
    },
    Topic {
        locale: "he-il",
        prompt: "מה הסטטוס של פרויקט \"אורן\"? תן לי 3 נקודות.",
        answer: "1. שלב האפיון הושלם.\n2. הפיתוח באיחור של שבועיים.\n3. נדרשת החלטה על הספק עד יום ה׳.",
        reference: "פרויקט אורן - סטטוס.pptx",
    },
    Topic {
        locale: "en-gb",
        prompt: "Draft a reply to Zoë thanking her for the 🚀 launch deck 👍🏽",
        answer: "Hi Zoë,\n\nThank you for the launch deck 🚀 — the timeline slide is particularly clear. I've added two comments on slide 7 re: the \"go/no-go\" criteria.\n\nBest,\n👨‍👩‍👧 Team",
        reference: "Launch deck – FY25 🚀.pptx",
    },
    Topic {
        locale: "es-es",
        prompt: "¿Cuáles son las tareas pendientes de José en el plan de migración?",
        answer: "José tiene 4 tareas pendientes: revisar el inventario, validar las copias de seguridad, actualizar la documentación y coordinar la ventana de mantenimiento con Ñuño.",
        reference: "Plan de migración – año fiscal.xlsx",
    },
    Topic {
        locale: "vi-vn",
        prompt: "Tóm tắt tài liệu \"Quy trình phê duyệt\" (bản mới nhất).",
        answer: "Quy trình gồm 5 bước: đề xuất, xem xét, phê duyệt cấp 1, phê duyệt cấp 2 và lưu trữ. Thời hạn xử lý tối đa là 3 ngày làm việc.",
        reference: "Quy trình phê duyệt v2.docx",
    },
    Topic {
        locale: "en-us",
        prompt: "Explain this formula: =IF(A2>0,\"ok\",\"check\\review\")\tand why C:\\Temp\\ is referenced",
        answer: "The formula returns \"ok\" when A2 is positive and the text check\\review otherwise. The path C:\\Temp\\ comes from a legacy macro; a backslash in a string is literal.",
        reference: "Forecast model (draft).xlsx",
    },
    Topic {
        locale: "en-us",
        prompt: "Is it safe to paste <script>alert('x')</script> into the wiki? Line\u{2028}separator test\u{1}",
        answer: "No. Markup such as </script> and <img onerror=…> is escaped by the wiki, but you should still remove it. The U+2028 character\u{2028}is also invisible in most editors.",
        reference: "Security guidelines – web content.docx",
    },
    Topic {
        locale: "sv-se",
        prompt: "Sammanfatta e\u{301}-posttråden om \"Ångström-projektet\" (Åsa, Örjan).",
        answer: "Åsa föreslår att leveransen flyttas till vecka 14; Örjan vill behålla vecka 12 men minska omfattningen. Beslut tas på måndag.",
        reference: "Ångström – tidplan.xlsx",
    },
    Topic {
        locale: "ko-kr",
        prompt: "내일 일정과 준비해야 할 자료를 알려 주세요.",
        answer: "내일 오전 10시에 분기 실적 검토 회의가 있습니다. 매출 보고서와 비용 분석표를 준비하세요. 🙏",
        reference: "분기 실적 보고서.pptx",
    },
];

/// Display names of generated users (given name, surname).
pub(crate) const GIVEN_NAMES: &[&str] = &[
    "Adele",
    "Zoë",
    "José",
    "Łukasz",
    "Ægir",
    "Chloé",
    "Søren",
    "Nuño",
    "Renée",
    "Björn",
    "Megan",
    "王",
    "さくら",
    "محمد",
    "Noa",
    "Ana\u{301}",
    "Đorđe",
    "Siobhán",
    "Kwame",
    "Priya",
];

pub(crate) const SURNAMES: &[&str] = &[
    "Vance",
    "Müller",
    "Álvarez",
    "Kowalski",
    "Þórsson",
    "Lefèvre",
    "Østergaard",
    "Peña",
    "Dubois",
    "Öberg",
    "Bowen",
    "芳",
    "田中",
    "العلي",
    "כהן",
    "García",
    "Đoković",
    "Ó Briain",
    "Mensah",
    "Iyer",
];

pub(crate) const JOB_TITLES: &[&str] = &[
    "Compliance Officer",
    "Relationship Manager",
    "Analyste financière",
    "Risk Analyst",
    "Head of Trading",
    "Software Engineer",
    "Legal Counsel",
    "Portfoliomanagerin",
];

pub(crate) const OFFICES: &[&str] = &["London", "Zürich", "Paris", "Frankfurt", "東京", "New York"];

/// Meeting names for TeamsMeeting contexts.
pub(crate) const MEETINGS: &[&str] = &[
    "Weekly risk review",
    "Réunion d'équipe – T3",
    "Board prep 📊",
    "定例会議",
    "Client onboarding: ACME & Co",
];
